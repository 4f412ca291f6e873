"""e2e: Executions served by pre-started WarmPool pods on the real cluster (gVisor, NetworkPolicy, the local
operator): hello per language, the cold path's isolation facts and pod spec, nothing of an earlier run,
refill, deny-all egress before any code, and no pod claimed twice across an operator SIGKILL."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.executions import (
    API_VERSION,
    EXECUTION_UID_LABEL,
    OperatorProcess,
    PodWatch,
    assert_usage,
    execution_manifest,
    run,
    run_all,
    uid,
)
from tests.e2e.kube import kubectl, kubectl_json, wait_until
from tests.e2e.sandbox_facts import FACTS, assert_isolated, assert_sandbox_pod_spec
from tests.e2e.test_executions import HELLO_RESULT, HELLO_SPEC, PROGRAMS

pytestmark = pytest.mark.e2e

POOL_LABEL = "codeexec.io/pool"
# A pool pod's start: gVisor's sandbox, the isolation probe, the interpreter's preload (TypeScript's compiler).
READY_TIMEOUT = 120


def create_pool(namespace: str, name: str, runtime: str, replicas: int) -> None:
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "WarmPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"runtime": runtime, "replicas": replicas},
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def idle_ready_pods(namespace: str, pool: str) -> list[str]:
    pods = kubectl_json("get", "pods", "-n", namespace, "-l", f"{POOL_LABEL}={pool},!{EXECUTION_UID_LABEL}")["items"]
    return sorted(
        pod["metadata"]["name"]
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
    )


def wait_pool_ready(namespace: str, pool: str, replicas: int) -> list[str]:
    """The pool's idle Ready pods once it has `replicas` of them."""
    return wait_until(
        lambda: ready if len(ready := idle_ready_pods(namespace, pool)) >= replicas else None,
        READY_TIMEOUT,
        f"WarmPool {pool} to have {replicas} ready pods",
        interval=0.5,
    )


def status_of(execution: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = execution.get("status", {})
    return found


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_warm_hello_per_language(op_namespace: str, language: str) -> None:
    """Input, args, env, stdin, stdout/stderr, the result and the exit code, as on the cold path. Seen failing
    with the request's env applied after the harness had read it (env None)."""
    create_pool(op_namespace, language, language, 1)
    [pool_pod] = wait_pool_ready(op_namespace, language, 1)
    hello, _ = PROGRAMS[language]
    status = status_of(run(op_namespace, "hello", language, hello, **HELLO_SPEC))
    assert (status["phase"], status["reason"], status["exitCode"]) == ("Succeeded", "Completed", 0), status
    assert (status["sandbox"], status["podName"]) == ("warm", pool_pod)
    assert status["stdout"] == "hello, world\n"
    assert status["stderr"] == "to stderr\n"
    assert status["result"] == HELLO_RESULT
    assert 0 <= status["durationMs"] < 10_000
    assert_usage(status)  # the warm path's runner reaps the pre-started harness: its usage, as a cold run's


def test_warm_sandbox_has_the_cold_sandboxes_facts_and_pod_spec(op_namespace: str) -> None:
    """The same FACTS program and assertions as test_executions' cold sandbox, in a claimed pool pod."""
    create_pool(op_namespace, "py", "python", 1)
    [pool_pod] = wait_pool_ready(op_namespace, "py", 1)
    with PodWatch(op_namespace) as pods:
        status = status_of(run(op_namespace, "facts", "python", FACTS, timeoutSeconds=20))
        pod = pods.latest(pool_pod)  # as claimed (labels, owner, deadline)
    assert status["phase"] == "Succeeded", (status.get("message"), status.get("stderr"))
    assert (status["sandbox"], status["podName"]) == ("warm", pool_pod)
    assert_isolated(status["result"])
    assert pod is not None
    assert_sandbox_pod_spec(pod["spec"], timeout_seconds=20, warm=True)
    assert pod["metadata"]["labels"][EXECUTION_UID_LABEL] == uid(
        kubectl_json("get", "execution", "facts", "-n", op_namespace)
    )
    assert [ref["kind"] for ref in pod["metadata"]["ownerReferences"]] == ["Execution"]


LEAVE_TRACES = """import os, subprocess
open("/tmp/left-behind", "w").write("secret")
subprocess.Popen(["sleep", "300"], start_new_session=True)
return sorted(os.listdir("/tmp"))
"""
LOOK_FOR_TRACES = """import os
commands = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            commands.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip())
        except OSError:
            pass
return {"tmp": sorted(os.listdir("/tmp")), "sleepers": [c for c in commands if c.startswith("sleep")]}
"""


def test_a_second_run_from_the_same_pool_sees_nothing_of_the_first(op_namespace: str) -> None:
    """/tmp files and processes of an earlier run never reach a later one: each pool pod serves once."""
    create_pool(op_namespace, "py", "python", 2)
    wait_pool_ready(op_namespace, "py", 2)
    first = status_of(run(op_namespace, "first", "python", LEAVE_TRACES))
    assert first["phase"] == "Succeeded" and first["sandbox"] == "warm", first
    assert "left-behind" in first["result"]
    second = status_of(run(op_namespace, "second", "python", LOOK_FOR_TRACES))
    assert second["phase"] == "Succeeded" and second["sandbox"] == "warm", second
    assert second["podName"] != first["podName"]
    assert "left-behind" not in second["result"]["tmp"]
    assert second["result"]["sleepers"] == []


def test_the_pool_refills_behind_claims(op_namespace: str) -> None:
    create_pool(op_namespace, "py", "python", 2)
    before = set(wait_pool_ready(op_namespace, "py", 2))
    found = run_all(op_namespace, [execution_manifest(f"run-{n}", "python", "print('hi')") for n in range(2)])
    claimed = {status_of(item)["podName"] for item in found.values()}
    assert {status_of(item)["sandbox"] for item in found.values()} == {"warm"} and claimed == before
    after = set(wait_pool_ready(op_namespace, "py", 2))
    assert not after & before, "a claimed pod was offered again"


CONNECT_FIRST = """import socket
results = {}
for host, port in TARGETS:
    try:
        socket.create_connection((host, port), timeout=2).close()
        results[f"{host}:{port}"] = "connected"
    except OSError as error:
        results[f"{host}:{port}"] = type(error).__name__
return results
"""


def test_deny_all_egress_is_in_force_before_the_first_line_runs(op_namespace: str) -> None:
    """The very first statement of the code tries the API server and the kube-dns Service: both fail, and the
    report shows the runner's isolation probe saw the pool's NetworkPolicy in force before the pod was Ready."""
    service = kubectl_json("get", "service", "kubernetes", "-n", "default")
    api = (service["spec"]["clusterIP"], service["spec"]["ports"][0]["port"])
    create_pool(op_namespace, "py", "python", 1)
    [pool_pod] = wait_pool_ready(op_namespace, "py", 1)
    logs_before = kubectl("logs", "-n", op_namespace, pool_pod)
    assert logs_before == "", "a waiting pool pod writes nothing before its request"
    code = f"TARGETS = [{api!r}, ('1.1.1.1', 443)]\n" + CONNECT_FIRST
    status = status_of(run(op_namespace, "egress", "python", code))
    assert status["phase"] == "Succeeded" and status["sandbox"] == "warm", status
    assert "connected" not in status["result"].values(), status["result"]


def test_no_pod_is_claimed_twice_in_a_burst_larger_than_the_pool_across_an_operator_sigkill(
    op_namespace: str, operator: OperatorProcess
) -> None:
    """16 Executions against a pool of 2, the operator killed with SIGKILL mid-burst and restarted: every one
    Succeeds with its own output, each has exactly one pod, and no pod ever carried two Executions."""
    create_pool(op_namespace, "py", "python", 2)
    wait_pool_ready(op_namespace, "py", 2)
    manifests = [execution_manifest(f"b{n:02d}", "python", f"print({n} * 7)") for n in range(16)]
    with PodWatch(op_namespace) as pods:
        kubectl(
            "create",
            "-n",
            op_namespace,
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
        )
        wait_until(
            lambda: sum(status_of(e).get("sandbox") == "warm" for e in _executions(op_namespace).values()) >= 2,
            60,
            "two warm claims before the kill",
            interval=0.2,
        )
        operator.kill()
        operator.start()
        found = wait_until(lambda: _all_finished(op_namespace, 16), 240, "the burst to finish", interval=1)
        events = pods.events()
    for n, item in enumerate(sorted(found.values(), key=lambda e: e["metadata"]["name"])):
        status = status_of(item)
        assert (status["phase"], status["stdout"]) == ("Succeeded", f"{n * 7}\n"), (item["metadata"]["name"], status)
    by_execution: dict[str, set[str]] = {}
    by_pod: dict[str, set[str]] = {}
    for _, pod in events:
        owner = (pod["metadata"].get("labels") or {}).get(EXECUTION_UID_LABEL)
        if owner:
            by_execution.setdefault(owner, set()).add(pod["metadata"]["uid"])
            by_pod.setdefault(pod["metadata"]["uid"], set()).add(owner)
    assert {uid(item) for item in found.values()} == set(by_execution)
    assert all(len(pod_uids) == 1 for pod_uids in by_execution.values()), by_execution
    assert all(len(owners) == 1 for owners in by_pod.values()), by_pod
    warm_runs = sum(status_of(item)["sandbox"] == "warm" for item in found.values())
    assert warm_runs >= 2, f"only {warm_runs} warm"


def _executions(namespace: str) -> dict[str, dict[str, Any]]:
    return {item["metadata"]["name"]: item for item in kubectl_json("get", "executions", "-n", namespace)["items"]}


def _all_finished(namespace: str, count: int) -> dict[str, dict[str, Any]] | None:
    found = _executions(namespace)
    terminal = {"Succeeded", "Failed", "TimedOut", "Rejected"}
    done = [item for item in found.values() if status_of(item).get("phase") in terminal]
    return found if len(done) == count else None
