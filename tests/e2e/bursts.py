"""Bursts of Executions for e2e tests and the burst benchmark: many created at once as a user would, waited
for through a watch, every sandbox pod of a set of namespaces watched for the whole test (how many per
Execution, in which order they were created, how many ran at once; or counted from etcd, when the API server
itself goes down), and whether a burst of trivial ones ended well (each Succeeded with its own stdout)."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import tempfile
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Self

from tests.e2e.executions import (
    EXECUTION_UID_LABEL,
    FINISH_TIMEOUT,
    TERMINAL_PHASES,
    ExecutionWatch,
    Watch,
    execution_manifest,
)
from tests.e2e.kube import kubectl, wait_until

POD_DONE_PHASES = frozenset({"Succeeded", "Failed"})
# The dev cluster's etcd (hack/lib/components.sh), through its JSON gateway to the gRPC API.
ETCD = "http://127.0.0.1:2379"
# A sandbox pod's Execution uid label as the API server stores it (protobuf): the key, then the 36-byte value.
_STORED_UID_LABEL = re.compile(rb"codeexec\.io/execution-uid\x12\x24([0-9a-f-]{36})")


def create_at_once(namespace: str, manifests: Iterable[Mapping[str, Any]]) -> None:
    """One `kubectl create -f` of a multi-document YAML file holding every manifest, as a user would."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="burst-") as file:
        file.write("".join(f"---\n{json.dumps(manifest)}\n" for manifest in manifests))  # JSON is YAML
        file.flush()
        kubectl("create", "-n", namespace, "-f", file.name, timeout=120)


def wait_terminal(watch: ExecutionWatch, names: Iterable[str], timeout: float = FINISH_TIMEOUT) -> dict[str, Any]:
    """The last version the watch saw of each named Execution, once every one has a terminal phase."""
    wanted = sorted(set(names))

    def terminal() -> dict[str, Any] | None:
        watch.check_alive()
        latest = {name: watch.latest(name) for name in wanted}
        if all(_phase(item) in TERMINAL_PHASES for item in latest.values()):
            return latest
        return None

    try:
        return wait_until(terminal, timeout, f"{len(wanted)} Executions to finish", interval=1)
    except AssertionError as error:
        phases = Counter(_phase(watch.latest(name)) for name in wanted)
        raise AssertionError(f"{error}; phases now: {dict(phases)}") from None


def creation_order(found: Iterable[Mapping[str, Any]]) -> list[str]:
    """Execution uids in the order the queue promises to start them: by creationTimestamp (whole
    seconds), then name, then uid."""
    ordered = sorted(found, key=lambda item: (item["metadata"]["creationTimestamp"], item["metadata"]["name"]))
    return [item["metadata"]["uid"] for item in ordered]


def ever_queued(watch: ExecutionWatch, name: str) -> list[dict[str, Any]]:
    """The statuses of an Execution that showed it waiting in the queue (reason Queued)."""
    return [status for status in watch.statuses(name) if status.get("reason") == "Queued"]


class SandboxPods(Watch):
    """Every sandbox pod in `namespaces`, through one watch across the cluster, so that the events of
    all namespaces come in one order: the order in which the API server stored them."""

    def __init__(self, namespaces: Iterable[str]) -> None:
        self.namespaces = frozenset(namespaces)
        super().__init__(f"/api/v1/pods?labelSelector={EXECUTION_UID_LABEL}")

    def ours(self) -> list[tuple[str, dict[str, Any]]]:
        return [(kind, pod) for kind, pod in self.events() if pod["metadata"]["namespace"] in self.namespaces]

    def created(self) -> list[dict[str, Any]]:
        """Each pod once, as first seen, in the order they were created."""
        seen: dict[str, dict[str, Any]] = {}
        for _, pod in self.ours():
            seen.setdefault(pod["metadata"]["uid"], pod)
        return list(seen.values())

    def pods_per_execution(self) -> Counter[str]:
        """Execution uid → how many pods were ever created for it."""
        return Counter(pod["metadata"]["labels"][EXECUTION_UID_LABEL] for pod in self.created())

    def start_order(self) -> list[str]:
        """Execution uids in the order their (first) pods were created."""
        return list(dict.fromkeys(pod["metadata"]["labels"][EXECUTION_UID_LABEL] for pod in self.created()))

    def most_running(self, group: Callable[[dict[str, Any]], str] = lambda pod: "all") -> Counter[str]:
        """The largest number of pods that ever ran at the same time, per group (default: all of them)."""
        peaks: Counter[str] = Counter()
        for running in self._running():
            for key, count in Counter(group(pod) for pod in running.values()).items():
                peaks[key] = max(peaks[key], count)
        return peaks

    def running_now(self) -> list[dict[str, Any]]:
        """The pods running after the last event seen."""
        latest = {pod["metadata"]["uid"]: (kind, pod) for kind, pod in self.ours()}
        return [pod for kind, pod in latest.values() if not _pod_ended(kind, pod)]

    def _running(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The running pods (by uid) after each event, replayed in order. A pod runs from its creation
        until the first event showing it finished or going away; the operator frees a slot only later
        (when the Execution is terminal), so this never counts more than the operator does."""
        running: dict[str, dict[str, Any]] = {}
        ended: set[str] = set()
        for kind, pod in self.ours():
            pod_uid = pod["metadata"]["uid"]
            if pod_uid in ended:
                continue
            if _pod_ended(kind, pod):
                running.pop(pod_uid, None)
                ended.add(pod_uid)
            else:
                running[pod_uid] = pod
            yield running


@contextlib.contextmanager
def watching(namespaces: Iterable[str]) -> Iterator[tuple[SandboxPods, dict[str, ExecutionWatch]]]:
    """The sandbox pods of the namespaces and the Executions of each, watched until the block ends."""
    namespaces = list(namespaces)
    with SandboxPods(namespaces) as pods, contextlib.ExitStack() as stack:
        yield pods, {namespace: stack.enter_context(ExecutionWatch(namespace)) for namespace in namespaces}


def by_namespace(pod: Mapping[str, Any]) -> str:
    namespace: str = pod["metadata"]["namespace"]
    return namespace


def _pod_ended(kind: str, pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    return (
        kind == "DELETED"
        or "deletionTimestamp" in pod["metadata"]
        or status.get("phase") in POD_DONE_PHASES
        or (bool(containers) and all("terminated" in container.get("state", {}) for container in containers))
    )


def burst_manifests(prefix: str, count: int, **spec: Any) -> list[dict[str, Any]]:
    """`count` trivial Python Executions named <prefix>-000…; each prints its own name."""
    names = [f"{prefix}-{index:03d}" for index in range(count)]
    return [execution_manifest(name, "python", f"print({name!r})\n", **spec) for name in names]


def expected_stdout(manifest: Mapping[str, Any]) -> str:
    return f"{manifest['metadata']['name']}\n"


def burst_failures(
    manifests: Iterable[Mapping[str, Any]],
    finished: Mapping[str, Mapping[str, Any] | None],
    pods_created: Mapping[str, int],
) -> list[str]:
    """Each Execution of a burst that did not end Succeeded with its own stdout, or for which other than
    exactly one sandbox pod was created (`pods_created`: Execution uid → pods created), as one line."""
    failures = []
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        execution = finished.get(name)
        if execution is None:
            failures.append(f"{name}: gone")
            continue
        status = execution.get("status") or {}
        if outcome(execution) != "Succeeded/Completed" or status.get("stdout") != expected_stdout(manifest):
            failures.append(f"{name}: {outcome(execution)} stdout {status.get('stdout')!r}: {status.get('message')}")
        pods = pods_created.get(execution["metadata"]["uid"], 0)
        if pods != 1:
            failures.append(f"{name}: {pods} sandbox pods created")
    return failures


def outcome(execution: Mapping[str, Any] | None) -> str:
    """phase/reason, e.g. "Failed/StartTimeout"."""
    status = (execution or {}).get("status") or {}
    return f"{status.get('phase')}/{status.get('reason')}"


class EtcdPodCreations:
    """Every pod created in a namespace while it runs, seen by a watch on etcd itself rather than on the API
    server, so that it misses nothing while the API server is down or restarting (an API watch ends with
    the server, and a restarted server cannot resume it from an older resourceVersion). A creation is a
    write of a key that did not exist (the key's version is 1)."""

    def __init__(self, namespace: str) -> None:
        prefix = f"/registry/pods/{namespace}/".encode()
        # From the revision after the current one: only what is created from now on counts.
        revision = int(_etcd("/v3/kv/range", {"key": _b64(prefix), "count_only": True})["header"]["revision"])
        watch = {
            "key": _b64(prefix),
            "range_end": _b64(prefix[:-1] + bytes([prefix[-1] + 1])),
            "start_revision": str(revision + 1),
        }
        self._lock = threading.Lock()
        self._created: list[str] = []  # the Execution uid label of each pod created, in order
        request = urllib.request.Request(
            f"{ETCD}/v3/watch", data=json.dumps({"create_request": watch}).encode(), method="POST"
        )
        self._stream = urllib.request.urlopen(request, timeout=3600)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self._stream:
                for event in json.loads(line).get("result", {}).get("events", []):
                    kv = event["kv"]
                    if event.get("type") != "DELETE" and kv.get("version") == "1":
                        found = _STORED_UID_LABEL.search(base64.b64decode(kv.get("value", "")))
                        with self._lock:
                            self._created.append(found.group(1).decode() if found else "")
        except (OSError, ValueError, AttributeError):
            return  # stop() closed the stream under the reader (check_alive reports any other end)

    def check_alive(self) -> None:
        """Fails if the watch ended: creations after that would be missing."""
        if not self._reader.is_alive():
            raise AssertionError("the etcd watch on pods ended early")

    def pods_per_execution(self) -> Counter[str]:
        """Execution uid → how many pods labelled with it were created."""
        with self._lock:
            return Counter(uid for uid in self._created if uid)

    def stop(self) -> None:
        self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _etcd(path: str, body: Mapping[str, Any]) -> Any:
    request = urllib.request.Request(f"{ETCD}{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _phase(execution: Mapping[str, Any] | None) -> str | None:
    if execution is None:
        return None
    phase: str | None = (execution.get("status") or {}).get("phase")
    return phase
