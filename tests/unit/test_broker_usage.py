"""status.bindings writes: at most one per interval per Execution, the last counts always written, counters
going on from what the status already holds, only status.bindings in the patch; Events on refusals throttled."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from types import SimpleNamespace
from typing import Any

from codeexec.broker.errors import ModelNotAllowed, NotGranted, SqlError
from codeexec.broker.kube import KubeClient
from codeexec.broker.refusals import RefusalEvents
from codeexec.broker.usage import UsageWriter
from codeexec.client.kubeapi import Connection

INTERVAL = 0.2


class RecordingKube:
    def __init__(self) -> None:
        self.patches: list[tuple[float, str, dict[str, Any]]] = []
        self.uids: list[tuple[str, str]] = []
        self.events: list[dict[str, Any]] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        return None

    async def patch_status(self, namespace: str, name: str, uid: str, patch: dict[str, Any]) -> None:
        self.patches.append((time.monotonic(), name, patch))
        self.uids.append((name, uid))

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        self.events.append(event)


def execution(name: str, uid: str, written: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Running"}
    if written is not None:
        status["bindings"] = written
    return {"metadata": {"name": name, "namespace": "team-a", "uid": uid}, "status": status}


def test_a_burst_is_written_at_once_then_once_per_interval_with_the_last_counts() -> None:
    async def scenario() -> RecordingKube:
        kube = RecordingKube()
        writer = UsageWriter(kube, INTERVAL)
        ex = execution("ex-a", "uid-a")
        for _ in range(50):
            writer.record(ex, "notes", "db", {"rowsRead": 2, "rowsWritten": 1})
            await asyncio.sleep(0.01)  # 0.5 s of calls on an idle machine, longer on a busy one
        await writer.flush()
        return kube

    started = time.monotonic()
    kube = asyncio.run(scenario())
    elapsed = time.monotonic() - started
    times = [at for at, _, _ in kube.patches]
    assert all(later - earlier >= INTERVAL * 0.95 for earlier, later in itertools.pairwise(times))
    # Not one per call: the first at once, then at most one per interval of the burst's real duration (a
    # loaded machine stretches the 0.5 s), and the last counts at the flush.
    assert 2 <= len(kube.patches) <= 2 + elapsed / INTERVAL
    (last,) = kube.patches[-1][2]["status"]["bindings"]
    assert kube.patches[-1][2] == {"status": {"bindings": [last]}}
    assert (last["calls"], last["rowsRead"], last["rowsWritten"]) == (50, 100, 50)


def test_executions_are_throttled_apart_and_counts_continue_from_the_status() -> None:
    async def scenario() -> RecordingKube:
        kube = RecordingKube()
        writer = UsageWriter(kube, INTERVAL)
        earlier = [
            {"name": "notes", "type": "db", "calls": 7, "errors": 1, "refused": 0, "rowsRead": 3, "rowsWritten": 0}
        ]
        writer.record(execution("ex-a", "uid-a", earlier), "notes", "db", error=SqlError("no such table: x"))
        writer.record(execution("ex-b", "uid-b"), "notes", "db", {"rowsRead": 1})
        writer.record(execution("ex-b", "uid-b"), "other", "db", error=NotGranted("no"), refused=True)
        await writer.flush()
        return kube

    kube = asyncio.run(scenario())
    last = {name: patch["status"]["bindings"] for _, name, patch in kube.patches}
    assert last["ex-a"] == [
        {
            "name": "notes",
            "type": "db",
            "calls": 8,
            "errors": 2,
            "refused": 0,
            "rowsRead": 3,
            "rowsWritten": 0,
            "lastError": "SqlError: no such table: x",
        }
    ]
    assert [(entry["name"], entry["calls"], entry["refused"]) for entry in last["ex-b"]] == [
        ("notes", 1, 0),
        ("other", 1, 1),
    ]


def test_each_type_counts_its_own_things() -> None:
    """A db entry counts rows, an ai entry tokens: neither carries the other's fields."""

    async def scenario() -> RecordingKube:
        kube = RecordingKube()
        writer = UsageWriter(kube, INTERVAL)
        ex = execution("ex-a", "uid-a")
        writer.record(ex, "notes", "db", {"rowsRead": 1, "rowsWritten": 0})
        writer.record(ex, "llm", "ai", {"tokens": 30})
        writer.record(ex, "llm", "ai", {"tokens": 12})
        writer.record(ex, "llm", "ai", error=ModelNotAllowed("no"), refused=True)
        await writer.flush()
        return kube

    kube = asyncio.run(scenario())
    entries = {entry["name"]: entry for entry in kube.patches[-1][2]["status"]["bindings"]}
    assert entries["llm"] == {
        "name": "llm",
        "type": "ai",
        "calls": 3,
        "errors": 0,
        "refused": 1,
        "tokens": 42,
        "lastError": "ModelNotAllowed: no",
    }
    assert entries["notes"] == {
        "name": "notes",
        "type": "db",
        "calls": 1,
        "errors": 0,
        "refused": 0,
        "rowsRead": 1,
        "rowsWritten": 0,
    }


def test_a_recreated_execution_of_the_same_name_never_gets_the_old_ones_counts() -> None:
    async def scenario() -> RecordingKube:
        kube = RecordingKube()
        writer = UsageWriter(kube, INTERVAL)
        writer.record(execution("ex-a", "uid-old"), "notes", "db", {"rowsRead": 5})
        writer.record(execution("ex-a", "uid-new"), "notes", "db", {"rowsRead": 1})
        await writer.flush()
        return kube

    kube = asyncio.run(scenario())
    assert sorted(kube.uids) == [("ex-a", "uid-new"), ("ex-a", "uid-old")]


class RecordingSession:
    """What KubeClient sends through aiohttp, answered 200."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any, dict[str, str]]] = []

    @contextlib.asynccontextmanager
    async def request(self, method: str, url: str, json: Any, headers: dict[str, str], **_: Any) -> Any:
        self.sent.append((method, url, json, headers))
        yield SimpleNamespace(status=200, json=lambda **_: asyncio.sleep(0, {}))


def test_the_status_patch_applies_to_that_uid_only() -> None:
    """A JSON Patch testing metadata.uid first: the API refuses it (422) when the name is another Execution's now.
    (A merge patch's metadata.uid would be dropped silently by the status subresource: seen on the cluster.)"""
    session = RecordingSession()
    client = KubeClient(session, Connection("https://api", False, "t"), None)  # type: ignore[arg-type]
    patch = {"status": {"bindings": [{"name": "notes", "calls": 1}]}}
    asyncio.run(client.patch_status("team-a", "ex-a", "uid-a", patch))
    ((method, url, body, headers),) = session.sent
    assert (method, url) == ("PATCH", "https://api/apis/codeexec.io/v1alpha1/namespaces/team-a/executions/ex-a/status")
    assert headers["Content-Type"] == "application/json-patch+json"
    assert body == [
        {"op": "test", "path": "/metadata/uid", "value": "uid-a"},
        {"op": "add", "path": "/status/bindings", "value": [{"name": "notes", "calls": 1}]},
    ]


def test_refusal_events_are_throttled_per_execution() -> None:
    async def scenario() -> RecordingKube:
        kube = RecordingKube()
        events = RefusalEvents(kube, interval_seconds=60)
        for _ in range(20):
            events.report(execution("ex-a", "uid-a"), "notes", "not granted")
        events.report(execution("ex-b", "uid-b"), "notes", "not granted")
        await asyncio.sleep(0.05)
        return kube

    kube = asyncio.run(scenario())
    assert sorted(event["involvedObject"]["name"] for event in kube.events) == ["ex-a", "ex-b"]
