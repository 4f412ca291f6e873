"""Helpers for e2e tests of the operator: the operator as a local process, Executions, pod watches."""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from codeexec import builders, egress, status
from codeexec.builders import ExecutionRef
from codeexec.config import OperatorConfig
from codeexec.validation import Plan, format_cpu, format_memory, parse_runtimes, plan_execution
from tests.e2e.kube import ENV, REPO, kubectl, kubectl_json, kubectl_run, wait_until

API_VERSION = "codeexec.io/v1alpha1"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "TimedOut", "Rejected"})
EXECUTION_UID_LABEL = "codeexec.io/execution-uid"
# This test session's namespaces are e2e-op-<session>-<random> and its operator watches only
# e2e-op-<session>-*: neither an installed operator (told to leave e2e-op-*) nor the operator of
# another pytest session on the same cluster ever handles them.
SESSION = uuid.uuid4().hex[:6]
OPERATOR_NAMESPACES = f"e2e-op-{SESSION}-*"
# From apply to a terminal phase of a short program, generously: the node has 2 cores.
FINISH_TIMEOUT = 120


class OperatorProcess:
    """The operator (`python -m codeexec run`) as a local process, its output appended to `log_path`."""

    def __init__(self, log_path: Path, env: Mapping[str, str]) -> None:
        self.log_path = log_path
        self._env = {**ENV, **env}
        self._process: subprocess.Popen[bytes] | None = None
        self._port = 0

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 60) -> None:
        """Starts the operator and waits until Kopf answers its liveness probe."""
        assert not self.running, "the operator is already running"
        self._port = _free_port()
        with self.log_path.open("ab") as log:
            log.write(f"\n===== operator starting (liveness port {self._port}) =====\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "codeexec", "run", "--liveness", f"http://127.0.0.1:{self._port}/healthz"],
                cwd=REPO,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(self._alive, timeout, f"the operator to answer its liveness probe (log: {self.log_path})")

    def stop(self, timeout: float = 30) -> None:
        """Graceful stop (SIGTERM), SIGKILL if it does not exit in time."""
        if not self.running:
            return
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the operator gets no chance to finish anything."""
        if not self.running:
            return
        assert self._process is not None
        self._process.kill()
        self._process.wait(10)

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int, max_lines: int = 300) -> str:
        """The log written after byte `offset`, at most its last `max_lines` lines."""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        skipped = f"[... {len(lines) - max_lines} earlier lines in {self.log_path}]\n" if len(lines) > max_lines else ""
        return skipped + "\n".join(lines[-max_lines:])

    def _alive(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise AssertionError(f"the operator exited early:\n{self.log_since(0, 60)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self._port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@dataclass(frozen=True)
class OwnOperator:
    """An operator a test started for itself (the own_operator fixture), and the only namespaces it watches."""

    process: OperatorProcess
    namespaces: list[str]


# own_operator's starter: `start(namespace_count, **env)`, env the CODEEXEC_* variables to set.
StartOperator = Callable[..., OwnOperator]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def operators_watching(namespace: str) -> list[str]:
    """Deployments running a code-exec operator that would handle Executions in `namespace` too
    (CODEEXEC_NAMESPACES unset, empty, or naming or matching it), as namespace/name."""
    found = []
    for deployment in kubectl_json("get", "deployments", "--all-namespaces")["items"]:
        if deployment["spec"].get("replicas") == 0:
            continue
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            words = [container.get("image", ""), *container.get("command", []), *container.get("args", [])]
            if not any("codeexec" in word for word in words) or {"gateway", "broker"} & set(container.get("args", [])):
                continue  # not code-exec, or its HTTP gateway or bindings broker (which handle no Execution)
            env = {var["name"]: var.get("value", "") for var in container.get("env", [])}
            patterns = [item.strip() for item in env.get("CODEEXEC_NAMESPACES", "").split(",") if item.strip()]
            if not patterns or any(fnmatch.fnmatchcase(namespace, pattern) for pattern in patterns):
                found.append(f"{deployment['metadata']['namespace']}/{deployment['metadata']['name']}")
    return found


def op_namespace_name() -> str:
    """A fresh name the session's operator watches."""
    return OPERATOR_NAMESPACES.replace("*", uuid.uuid4().hex[:8])


def own_namespace_name() -> str:
    """A fresh name for a test's own operator: e2e-op-q<session>-<random>, which no session's operator
    (e2e-op-<hex session>-*) and no installed operator (told to leave e2e-op-*) handles."""
    return f"e2e-op-q{SESSION}-{uuid.uuid4().hex[:8]}"


def install_crds_and_runtimes() -> None:
    """The generated CRDs and the bundled Runtimes, as the chart would install them."""
    crds = ("execution", "runtime", "warmpool", "sandboxbinding")
    kubectl("apply", *(arg for crd in crds for arg in ("-f", str(REPO / f"crds/{crd}.yaml"))))
    kubectl("wait", "--for=condition=Established", *(f"crd/{crd}s.codeexec.io" for crd in crds), "--timeout=60s")
    kubectl("apply", "-f", str(REPO / "crds/runtimes"))


def execution_manifest(name: str, language: str, code: str, **spec: Any) -> dict[str, Any]:
    """An Execution; `spec` keys are the API's own (camelCase), e.g. timeoutSeconds=5."""
    return {
        "apiVersion": API_VERSION,
        "kind": "Execution",
        "metadata": {"name": name},
        "spec": {"language": language, "code": code, **spec},
    }


def apply(
    namespace: str, *manifests: Mapping[str, Any], check: bool = True, validate: bool = True
) -> subprocess.CompletedProcess[str]:
    """One `kubectl apply` of the objects (several at once: a burst); with check=False the caller
    inspects a refusal; validate=False skips kubectl's strict field validation, as a lax client would."""
    document = manifests[0] if len(manifests) == 1 else {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
    flags = [] if validate else ["--validate=false"]
    result = kubectl_run("apply", *flags, "-n", namespace, "-f", "-", stdin=json.dumps(document))
    if check and result.returncode != 0:
        names = [manifest["metadata"]["name"] for manifest in manifests]
        raise AssertionError(f"kubectl apply of {names} failed: {result.stderr.strip()}")
    return result


def get_execution(namespace: str, name: str) -> dict[str, Any]:
    execution: dict[str, Any] = kubectl_json("get", "execution", name, "-n", namespace)
    return execution


def executions(namespace: str) -> dict[str, dict[str, Any]]:
    """Every Execution in the namespace by name (one API call, however many there are)."""
    items = kubectl_json("get", "executions", "-n", namespace)["items"]
    return {item["metadata"]["name"]: item for item in items}


def wait_finished(namespace: str, name: str, timeout: float = FINISH_TIMEOUT) -> dict[str, Any]:
    """The Execution once its phase is terminal."""
    return wait_all_finished(namespace, [name], timeout)[name]


def wait_all_finished(
    namespace: str, names: Iterable[str], timeout: float = FINISH_TIMEOUT
) -> dict[str, dict[str, Any]]:
    """The Executions once every one of them has a terminal phase."""
    wanted = set(names)

    def finished() -> dict[str, dict[str, Any]] | None:
        found = executions(namespace)
        if all(_phase(found.get(name)) in TERMINAL_PHASES for name in wanted):
            return {name: found[name] for name in wanted}
        return None

    try:
        return wait_until(finished, timeout, f"Executions {sorted(wanted)} to finish", interval=1)
    except AssertionError as error:
        phases = {name: _phase(item) for name, item in executions(namespace).items() if name in wanted}
        raise AssertionError(f"{error}; phases now: {phases}") from None


def run(namespace: str, name: str, language: str, code: str, **spec: Any) -> dict[str, Any]:
    """Applies an Execution and returns it in its terminal phase."""
    apply(namespace, execution_manifest(name, language, code, **spec))
    return wait_finished(namespace, name)


def run_all(namespace: str, manifests: Iterable[Mapping[str, Any]], timeout: float = FINISH_TIMEOUT) -> dict[str, Any]:
    """Applies several Executions at once (they run concurrently) and returns them all finished."""
    manifests = list(manifests)
    apply(namespace, *manifests)
    return wait_all_finished(namespace, [manifest["metadata"]["name"] for manifest in manifests], timeout)


def _phase(execution: Mapping[str, Any] | None) -> str | None:
    if execution is None:
        return None
    phase: str | None = execution.get("status", {}).get("phase")
    return phase


def create_sandbox_as_operator(namespace: str, name: str) -> None:
    """Does what start_execution does for an accepted Execution up to creating its pod, and no more
    (status Pending, ConfigMap, NetworkPolicy, Pod; no podName, no Kopf annotations): the state an
    operator killed just after creating the pod leaves. Built by the operator's own builders."""
    execution = get_execution(namespace, name)
    ref = ExecutionRef(namespace, name, uid(execution))
    config = OperatorConfig()
    plan = plan_execution(execution["spec"], parse_runtimes(kubectl_json("get", "runtimes")["items"]), config, True)
    assert isinstance(plan, Plan), plan
    resources = {"cpu": format_cpu(plan.cpu_millis), "memory": format_memory(plan.memory_bytes)}
    pending = status.pending({}, datetime.now(UTC), execution["metadata"]["generation"], resources)
    patch = json.dumps({"status": pending})
    kubectl("patch", "execution", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)
    probe = egress.isolation_probe(kubectl_json("get", "service", "kubernetes", "-n", "default"))
    # As kopf.append_owner_reference writes it.
    owner: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "Execution", "name": name, "uid": ref.uid}
    owner |= {"controller": True, "blockOwnerDeletion": True}
    for child in (
        builders.configmap(ref, plan),
        builders.networkpolicy(ref),
        builders.pod(ref, plan, config, isolation_probe=probe),
    ):
        child["metadata"]["ownerReferences"] = [owner]
        kubectl("create", "-f", "-", stdin=json.dumps(child))


def sandbox_objects(namespace: str, uid: str) -> list[str]:
    """Pods, ConfigMaps and NetworkPolicies labelled with the Execution's uid, as kind/name."""
    output = kubectl(
        "get",
        "pods,configmaps,networkpolicies",
        "-n",
        namespace,
        "-l",
        f"{EXECUTION_UID_LABEL}={uid}",
        "-o",
        "name",
    )
    return output.split()


def delete_executions(namespace: str) -> None:
    """Deletes every WarmPool (its idle pods go with it) and Execution (Kopf holds a finalizer on an unfinished
    one); when no operator removes their finalizers in time, removes them itself, so the namespace can go."""
    for kind in ("warmpools", "executions"):
        done = kubectl_run("delete", kind, "--all", "-n", namespace, "--timeout=60s", timeout=90)
        if done.returncode == 0:
            continue
        no_finalizers = '{"metadata":{"finalizers":null}}'
        for name in kubectl("get", kind, "-n", namespace, "-o", "name", check=False).split():
            kubectl("patch", name, "-n", namespace, "--type=merge", "-p", no_finalizers, check=False)


class Watch:
    """Records every event of a collection (e.g. a namespace's pods) from the moment it is created:
    a list, then a watch from the list's resourceVersion, so objects that came and went (the operator
    deletes finished sandboxes) are seen too, and nothing falls between the two. A watch the API server
    ends (a restart of it, a changed CRD) resumes from the last resourceVersion seen, so nothing falls
    between those either; when that version is too old to resume from, the record ends (check_alive)."""

    def __init__(self, path: str) -> None:
        listing = json.loads(kubectl("get", "--raw", path))
        self._events: list[tuple[str, dict[str, Any]]] = [("LISTED", item) for item in listing["items"]]
        self._lock = threading.Lock()
        self._path = path + ("&" if "?" in path else "?")  # the path may carry its own query, e.g. a label selector
        self._version: str = listing["metadata"]["resourceVersion"]
        self._stopping = False
        self._ended = ""  # why the record ended before stop(): events after that would be missing
        self._process = self._watch()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _watch(self) -> subprocess.Popen[bytes]:
        # Bookmarks keep the version to resume from recent while nothing changes.
        query = f"watch=1&allowWatchBookmarks=true&resourceVersion={self._version}&timeoutSeconds=3600"
        return subprocess.Popen(
            ["kubectl", "get", "--raw", self._path + query], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
        )

    def _read(self) -> None:
        while True:
            process = self._process
            assert process.stdout is not None
            for line in process.stdout:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":  # e.g. 410 Gone: the events since self._version are lost
                    with self._lock:
                        self._ended = event["object"].get("message", "an error event")
                    return
                self._version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    with self._lock:
                        self._events.append((event["type"], event["object"]))
            process.wait()
            time.sleep(1)  # the API server may be down for a while: retry, not spin
            with self._lock:
                if self._stopping:
                    return
                self._process = self._watch()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            process = self._process
        process.kill()
        process.wait()
        self._reader.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def check_alive(self) -> None:
        """Fails if the record ended early: events after that would be missing."""
        with self._lock:
            ended = self._ended or ("" if self._reader.is_alive() else "its reader stopped")
        if ended:
            raise AssertionError(f"the watch ended early: {ended}")

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self._events)

    def objects(self) -> dict[str, dict[str, Any]]:
        """Every object seen, by uid: its first recorded version (for pods: as the operator created it)."""
        seen: dict[str, dict[str, Any]] = {}
        for _, item in self.events():
            seen.setdefault(item["metadata"]["uid"], item)
        return seen

    def latest(self, name: str) -> dict[str, Any] | None:
        """The last version seen of the object named `name`."""
        versions = [version for _, version in self.events() if version["metadata"]["name"] == name]
        return versions[-1] if versions else None


class PodWatch(Watch):
    """Every pod created in a namespace while the watch runs (and those there before)."""

    def __init__(self, namespace: str) -> None:
        super().__init__(f"/api/v1/namespaces/{namespace}/pods")

    def pod_uids_by_execution(self) -> dict[str, set[str]]:
        """Execution uid → uids of every pod ever created for it."""
        result: dict[str, set[str]] = {}
        for pod_uid, pod in self.objects().items():
            owner = (pod["metadata"].get("labels") or {}).get(EXECUTION_UID_LABEL)
            if owner:
                result.setdefault(owner, set()).add(pod_uid)
        return result


class ExecutionWatch(Watch):
    """Every version of the Executions in a namespace while the watch runs."""

    def __init__(self, namespace: str) -> None:
        super().__init__(f"/apis/codeexec.io/v1alpha1/namespaces/{namespace}/executions")

    def statuses(self, name: str) -> list[dict[str, Any]]:
        """The successive distinct statuses of one Execution, oldest first."""
        result: list[dict[str, Any]] = []
        for _, item in self.events():
            if item["metadata"]["name"] == name:
                current = item.get("status") or {}
                if not result or result[-1] != current:
                    result.append(current)
        return result


def uid(execution: Mapping[str, Any]) -> str:
    value: str = execution["metadata"]["uid"]
    return value


def operator_log_dir() -> Path:
    """$CLUSTER_STATE/logs next to the cluster's own logs, else /tmp."""
    logs = Path(os.environ.get("CLUSTER_STATE", "/var/lib/code-exec-cluster")) / "logs"
    return logs if logs.is_dir() and os.access(logs, os.W_OK) else Path("/tmp")


def assert_usage(status: dict[str, Any]) -> None:
    """status.usage of a program that ran: some CPU (an interpreter starting takes some) and a resident set of at
    least a MiB but below a GiB (ru_maxrss as gVisor's wait4 fills it; issue 10). A zero peak here would mean
    gVisor stopped filling ru_maxrss."""
    usage = status.get("usage")
    assert usage is not None and set(usage) == {"cpuMs", "peakMemoryBytes"}, status
    assert 0 < usage["cpuMs"] < 60_000, usage
    assert 1024 * 1024 <= usage["peakMemoryBytes"] < 1024 * 1024 * 1024, usage
