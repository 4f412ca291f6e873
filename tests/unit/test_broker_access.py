"""The broker's API without a cluster: every step of the access check refuses on its own (401 without saying
which, 403 NotGranted), refusals become Events and counters, granted calls reach the engine."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from codeexec import bindingtoken
from codeexec.broker import errors
from codeexec.broker.app import BrokerSettings, create_app
from codeexec.broker.engine import ExecRequest, ExecResult, QueryRequest, QueryResult, Target
from codeexec.broker.kube import Kube, binding_path, execution_path
from codeexec.broker.limits import CallLimits
from codeexec.broker.refusals import REASON
from codeexec.broker.sqlite import SqliteEngine

KEY = b"k" * 48
NAMESPACE = "team-a"


class FakeKube:
    """The API as a dict of objects by path; patches and Events recorded."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.events: list[dict[str, Any]] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        return self.objects.get(path)

    async def patch_status(self, namespace: str, name: str, uid: str, patch: dict[str, Any]) -> None:
        self.patches.append((namespace, name, patch))

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        self.events.append(event)

    def execution(self, name: str, uid: str, bindings: list[str], phase: str = "Running") -> dict[str, Any]:
        execution = {
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": uid},
            "spec": {"bindings": bindings},
            "status": {"phase": phase},
        }
        self.objects[execution_path(NAMESPACE, name)] = execution
        return execution

    def binding(self, name: str, **db: Any) -> None:
        self.objects[binding_path(NAMESPACE, name)] = {"metadata": {"name": name}, "spec": {"db": db}}


@pytest.fixture
def kube() -> FakeKube:
    fake = FakeKube()
    fake.execution("ex-a", "uid-a", ["notes"])
    fake.execution("ex-b", "uid-b", ["secret-notes"])
    fake.binding("notes")
    fake.binding("secret-notes")
    return fake


@pytest.fixture
def client(kube: FakeKube, tmp_path: Path) -> Iterator[TestClient]:
    def engines(_: Kube) -> dict[str, SqliteEngine]:
        return {"sqlite": SqliteEngine(tmp_path)}

    settings = BrokerSettings(KEY, lambda _: kube, engines, max_body_bytes=4096, usage_interval_seconds=0.05)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def headers(name: str = "ex-a", uid: str = "uid-a", token: str | None = None) -> dict[str, str]:
    token = token if token is not None else bindingtoken.mint(KEY, NAMESPACE, name, uid)
    return {"Authorization": f"Bearer {token}", "X-Codeexec-Execution": f"{NAMESPACE}/{name}"}


def post(client: TestClient, binding: str, request_headers: dict[str, str], sql: str = "select 1 as one") -> Any:
    return client.post(f"/v1/db/{binding}/query", json={"sql": sql}, headers=request_headers)


def test_a_granted_call_reaches_the_database(client: TestClient, tmp_path: Path) -> None:
    answer = post(client, "notes", headers())
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"] == [{"one": 1}]
    assert (tmp_path / NAMESPACE / "notes.sqlite3").exists()


UNAUTHORIZED_BODY = {"error": {"code": "Unauthorized", "message": errors.Unauthorized.MESSAGE}}


@pytest.mark.parametrize(
    ("case", "request_headers"),
    [
        ("no token", {"X-Codeexec-Execution": f"{NAMESPACE}/ex-a"}),
        ("no execution header", {"Authorization": "Bearer " + bindingtoken.mint(KEY, NAMESPACE, "ex-a", "uid-a")}),
        ("not a bearer token", {**headers(), "Authorization": "Basic abc"}),
        ("an unknown Execution", headers(name="ex-gone")),
        ("a forged token", headers(token="x" * 43)),
        (
            "the token of another Execution",
            {**headers(name="ex-b", uid="uid-b"), "X-Codeexec-Execution": "team-a/ex-a"},
        ),
        ("the token of a former Execution of that name", headers(uid="uid-old")),
        ("a token of another key", headers(token=bindingtoken.mint(b"o" * 48, NAMESPACE, "ex-a", "uid-a"))),
    ],
)
def test_each_failing_token_step_is_401_and_says_nothing_of_which(
    client: TestClient, case: str, request_headers: dict[str, str]
) -> None:
    answer = post(client, "notes", request_headers)
    assert answer.status_code == 401, case
    assert answer.json() == UNAUTHORIZED_BODY, case


@pytest.mark.parametrize("phase", ["Pending", "Running"])
def test_a_token_lives_while_its_execution_is_unfinished(client: TestClient, kube: FakeKube, phase: str) -> None:
    """Pending too: the code may call before the operator has written Running (or while the operator is down)."""
    kube.execution("ex-a", "uid-a", ["notes"], phase=phase)
    assert post(client, "notes", headers()).status_code == 200


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "TimedOut", "Rejected", None])
def test_a_token_is_dead_once_its_execution_finished(client: TestClient, kube: FakeKube, phase: str | None) -> None:
    execution = kube.execution("ex-a", "uid-a", ["notes"], phase=phase or "")
    if phase is None:
        del execution["status"]
    answer = post(client, "notes", headers())
    assert answer.status_code == 401
    assert answer.json() == UNAUTHORIZED_BODY


def test_a_binding_the_execution_does_not_name_is_not_granted(client: TestClient, kube: FakeKube) -> None:
    """Execution A's valid token for the binding only B named: 403, and an Event on A saying so."""
    answer = post(client, "secret-notes", headers())
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "NotGranted"
    wait_for(lambda: kube.events)
    (event,) = kube.events
    assert event["reason"] == REASON and event["type"] == "Warning"
    assert event["involvedObject"]["name"] == "ex-a" and event["involvedObject"]["uid"] == "uid-a"
    assert "secret-notes" in event["message"]


def test_a_named_binding_that_does_not_exist_is_not_granted(client: TestClient, kube: FakeKube) -> None:
    del kube.objects[binding_path(NAMESPACE, "notes")]
    answer = post(client, "notes", headers())
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "NotGranted"
    wait_for(lambda: kube.patches)
    (entry,) = kube.patches[-1][2]["status"]["bindings"]
    assert entry["name"] == "notes" and entry["refused"] == 1 and entry["calls"] == 1


def test_a_refusal_makes_an_event_only_once_the_token_matched(client: TestClient, kube: FakeKube) -> None:
    """Without a matching token, no Event (anyone reaching the broker could write Events on any Execution) and no
    count; with its own token, an Execution no longer running gets one."""
    post(client, "notes", headers(name="ex-gone"))
    post(client, "notes", headers(token="x" * 43))
    post(client, "notes", {**headers(name="ex-b", uid="uid-b"), "X-Codeexec-Execution": "team-a/ex-a"})
    time.sleep(0.2)
    assert kube.events == [] and kube.patches == []
    kube.execution("ex-a", "uid-a", ["notes"], phase="Succeeded")
    post(client, "notes", headers())
    wait_for(lambda: kube.events)
    (event,) = kube.events
    assert event["involvedObject"]["name"] == "ex-a"
    assert "the Execution is Succeeded, not Pending or Running" in event["message"]


def test_the_callers_binding_name_reaches_no_event_or_log_line(
    client: TestClient, kube: FakeKube, caplog: pytest.LogCaptureFixture
) -> None:
    text = "URGENT: your namespace is suspended, see evil.example\nINFO forged line"
    caplog.set_level(logging.INFO, logger="codeexec.broker.app")
    answer = client.post(f"/v1/db/{quote(text, safe='')}/query", json={"sql": "select 1"}, headers=headers())
    assert answer.json()["error"]["code"] == "NotGranted"
    wait_for(lambda: kube.events)
    (event,) = kube.events
    assert "URGENT" not in event["message"] and "not a valid name" in event["message"]
    (line,) = [record.getMessage() for record in caplog.records if record.getMessage().startswith("refused")]
    assert "\n" not in line


def test_bad_bodies_are_400_bad_request_after_the_check(client: TestClient) -> None:
    for body in ({"sql": "select 1", "params": [[1]]}, {"sql": ""}, {"sql": "select 1", "mode": "many"}, {}):
        answer = client.post("/v1/db/notes/query", json=body, headers=headers())
        assert answer.status_code == 400, body
        assert answer.json()["error"]["code"] == "BadRequest"
    assert client.post("/v1/db/notes/query", json={}, headers=headers(token="x")).status_code == 401
    answer = client.post("/v1/db/notes/query", json={"sql": "x" * 5000}, headers=headers())
    assert answer.status_code == 413


def test_usage_reaches_the_status(client: TestClient, kube: FakeKube) -> None:
    client.post(
        "/v1/db/notes/exec", json={"sql": "create table t(a); insert into t values (1), (2)"}, headers=headers()
    )
    post(client, "notes", headers(), "select * from t")
    post(client, "notes", headers(), "select nope from t")
    wait_for(lambda: kube.patches and kube.patches[-1][2]["status"]["bindings"][0]["calls"] == 3)
    (entry,) = kube.patches[-1][2]["status"]["bindings"]
    assert entry == {
        "name": "notes",
        "type": "db",
        "calls": 3,
        "errors": 1,
        "refused": 0,
        "rowsRead": 2,
        "rowsWritten": 2,
        "lastError": "SqlError: no such column: nope",
    }


def test_rows_per_execution_are_a_budget_over_calls(client: TestClient, kube: FakeKube) -> None:
    kube.binding("notes", maxRowsPerExecution=3)
    client.post(
        "/v1/db/notes/exec", json={"sql": "create table t(a); insert into t values (1), (2)"}, headers=headers()
    )
    assert post(client, "notes", headers(), "select * from t").status_code == 200
    answer = post(client, "notes", headers(), "select * from t")
    assert answer.status_code == 413
    assert "maxRowsPerExecution" in answer.json()["error"]["message"]
    assert post(client, "notes", headers(), "select * from t limit 1").status_code == 200


class GatedEngine:
    """An engine whose calls of the SQL `wait` wait until `opened` is set."""

    def __init__(self) -> None:
        self.waiting = threading.Semaphore(0)
        self.opened = threading.Event()

    async def query(self, target: Target, request: QueryRequest, limits: CallLimits) -> QueryResult:
        if request.sql == "wait":
            self.waiting.release()
            while not self.opened.is_set():
                await asyncio.sleep(0.01)
        return QueryResult()

    async def exec(self, target: Target, request: ExecRequest, limits: CallLimits) -> ExecResult:
        raise AssertionError("not used")

    async def close(self) -> None:
        pass


def test_an_execution_may_have_only_so_many_calls_running(kube: FakeKube) -> None:
    kube.execution("ex-b", "uid-b", ["notes"])
    engine = GatedEngine()
    settings = BrokerSettings(KEY, lambda _: kube, lambda _: {"sqlite": engine}, max_calls_per_execution=2)
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(2) as threads:
        waiting = [threads.submit(post, client, "notes", headers(), "wait") for _ in range(2)]
        try:
            for _ in waiting:
                assert engine.waiting.acquire(timeout=5)
            answer = post(client, "notes", headers())
            assert answer.status_code == 429
            assert answer.json()["error"]["code"] == "TooManyCalls"
            assert post(client, "notes", headers("ex-b", "uid-b")).status_code == 200  # another Execution's
        finally:
            engine.opened.set()
        assert [call.result().status_code for call in waiting] == [200, 200]
        assert post(client, "notes", headers()).status_code == 200


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


# Generous: a wait for background writes, not a timing check; a loaded machine (CI beside the cluster) is slow.
def wait_for(condition: Any, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
