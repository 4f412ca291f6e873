"""e2e: the chart's two operator replicas with Kopf peering (issue 8, item 3) on the local cluster: exactly one
replica handles Executions while both serve the webhook and /metrics; SIGKILL of the active one's process in the
middle of a burst loses nothing and starts nothing twice; a gracefully deleted active one hands over at once.
The tests share one release and run in file order.

Needs the operator image localhost/codeexec/operator:0.1.0 with the current code (`make images`). Like
tests/e2e/test_helm.py, the release watches only its own `e2e-rep-<id>-work` namespace (no other operator does),
and uses the cluster's RuntimeClass, CRDs and Runtimes (tests/e2e/executions.py installs them); the chart installs
Kopf's peering CRD when it is missing. The failover times printed are measured on the loaded 2-core dev node.
Pod creations are counted by a watch on etcd itself and Executions are polled, not watched: other e2e runs (the
chaos tests) restart the API server, which ends API watches."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from codeexec.admission import WEBHOOK_ID
from codeexec.config import OperatorConfig
from tests.e2e.bursts import EtcdPodCreations, burst_failures, burst_manifests, create_at_once, outcome
from tests.e2e.executions import (
    Watch,
    delete_executions,
    execution_manifest,
    install_crds_and_runtimes,
    wait_all_finished,
)
from tests.e2e.kube import REPO, helm, kubectl, kubectl_json, kubectl_run, wait_until

pytestmark = pytest.mark.e2e
CHART = REPO / "charts/code-exec"
RELEASE = "code-exec"
OPERATOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
LIFETIME = OperatorConfig().peering_lifetime_seconds
# What the README promises, with room for the shared, loaded node: after a graceful stop the standby handles new
# Executions within seconds; after a SIGKILL within the peering lifetime plus the time it takes to resume.
GRACEFUL_HANDOVER_SECONDS = 15
KILLED_HANDOVER_SECONDS = LIFETIME + 20
BURST_TIMEOUT = 600
# Kopf's line when an operator has handled a new Execution (the webhook's lines name Executions too).
STARTED = "Handler 'start_execution' succeeded"


@dataclass(frozen=True)
class Release:
    namespace: str  # where the operator runs
    watched: str  # the only namespace it handles
    peering: str  # its ClusterKopfPeering


@pytest.fixture(scope="module")
def release(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    install_crds_and_runtimes()
    suffix = uuid.uuid4().hex[:6]
    namespace = f"e2e-rep-{suffix}"
    release = Release(namespace, f"{namespace}-work", f"{RELEASE}-{namespace}")
    for name in (release.namespace, release.watched):
        kubectl("create", "namespace", name)
        kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    values = {
        "operator": {"watchNamespaces": [release.watched]},  # replicaCount: the chart's default, 2
        "runtimeClass": {"create": False},
        "runtimes": {name: {"enabled": False} for name in ("python", "javascript", "typescript")},
        "helmTest": {"enabled": False},
    }
    values_file = tmp_path_factory.mktemp("helm") / "values.json"
    values_file.write_text(json.dumps(values))
    try:
        install(release, values_file)
        yield release
    finally:
        # While the operator runs: it removes its finalizers (else the namespace could never go).
        delete_executions(release.watched)
        helm("uninstall", RELEASE, "-n", release.namespace, "--wait", check=False)
        for name in (release.watched, release.namespace):
            kubectl("delete", "namespace", name, "--wait=false", check=False)


def install(release: Release, values_file: Path) -> None:
    args = ["install", RELEASE, str(CHART), "-n", release.namespace, "-f", str(values_file)]
    result = helm(*args, "--wait", "--timeout", "240s", check=False)
    if result.returncode != 0:
        pods = kubectl("get", "pods", "-n", release.namespace, "-o", "wide", check=False)
        pytest.fail(f"helm install failed: {result.stderr}\n{pods}")


# --- peering ------------------------------------------------------------------------------------


def peers(release: Release) -> dict[str, dict[str, Any]]:
    """The live records of the release's ClusterKopfPeering: pod name (Kopf's identity) → priority, lifetime,
    lastseen. Kopf removes a record on graceful exit; a record past lastseen + lifetime is dead."""
    status = kubectl_json("get", "clusterkopfpeering", release.peering).get("status") or {}
    now = datetime.now(UTC)
    return {identity: record for identity, record in status.items() if record and expires(record) > now}


def expires(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["lastseen"]) + timedelta(seconds=record["lifetime"])


def running_pods(release: Release) -> list[str]:
    pods = kubectl_json("get", "pods", "-n", release.namespace, "-l", OPERATOR)["items"]
    return sorted(
        pod["metadata"]["name"]
        for pod in pods
        if "deletionTimestamp" not in pod["metadata"] and pod["status"].get("phase") == "Running"
    )


def active_and_standby(release: Release) -> tuple[str, str] | None:
    """(active, standby) once both running pods have live records with distinct priorities, else None."""
    pods, live = running_pods(release), peers(release)
    if len(pods) != 2 or set(pods) != set(live):
        return None
    ranked = sorted(pods, key=lambda pod: live[pod]["priority"], reverse=True)
    assert live[ranked[0]]["priority"] != live[ranked[1]]["priority"], live  # equal: Kopf would pause both
    return ranked[0], ranked[1]


def wait_for_two_peers(release: Release) -> tuple[str, str]:
    return wait_until(lambda: active_and_standby(release), 180, "two operator pods peering with distinct priorities")


def log_of(release: Release, pod: str) -> str:
    return kubectl("logs", "-n", release.namespace, pod, "-c", "operator")


def handled_after(release: Release, name: str, since: float, timeout: float) -> float:
    """Creates an Execution (retrying while the webhook is unreachable) and returns the seconds from `since`
    (time.monotonic) until an operator wrote its status: the moment a replica handles new work."""
    manifest = json.dumps(execution_manifest(name, "python", f"print({name!r})\n"))

    def created() -> bool:
        return kubectl_run("create", "-n", release.watched, "-f", "-", stdin=manifest).returncode == 0

    wait_until(created, timeout, f"the webhook to admit {name}")
    wait_until(
        lambda: kubectl_json("get", "execution", name, "-n", release.watched).get("status"),
        timeout,
        f"an operator to handle {name}",
        interval=0.2,
    )
    return time.monotonic() - since


def kill_process(namespace: str, pod: str) -> None:
    """SIGKILL of the operator's process itself (not a pod deletion): containerd kills the container's task, so
    Kopf gets no chance to remove its peering record; the kubelet then restarts the container in the same pod."""
    status = kubectl_json("get", "pod", pod, "-n", namespace)["status"]
    (container,) = status["containerStatuses"]
    container_id = container["containerID"].removeprefix("containerd://")
    script = (
        f'source "{REPO}/hack/lib/common.sh" && "$CONTAINERD_BIN/ctr" --address "$CONTAINERD_STATE/containerd.sock" '
        f'-n "$CONTAINERD_NAMESPACE" tasks kill --signal SIGKILL {container_id}'
    )
    subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True)


def exit_code(watch: Watch, pod: str) -> int | None:
    """The exit code of the pod's operator container, once the watch saw it terminated."""
    statuses = ((watch.latest(pod) or {}).get("status") or {}).get("containerStatuses") or []
    codes = [status["state"]["terminated"]["exitCode"] for status in statuses if "terminated" in status["state"]]
    return codes[0] if codes else None


# --- tests --------------------------------------------------------------------------------------


def test_one_replica_is_active_and_both_serve(release: Release) -> None:
    """Two pods, two peering records with distinct priorities (drawn per replica at start-up; equal priorities
    would pause both), and only the higher one handles Executions. Both serve the webhook and /metrics.
    Safeguards: peering.configure's random priority per replica, mandatory peering in one object per release.
    Seen failing with every replica drawing priority 1: both logged "Pausing all operators, including self"
    and no two distinct priorities ever appeared."""
    active, standby = wait_for_two_peers(release)
    manifests = burst_manifests("one", 4)
    with EtcdPodCreations(release.watched) as pods:
        create_at_once(release.watched, manifests)
        finished = wait_all_finished(release.watched, [m["metadata"]["name"] for m in manifests], BURST_TIMEOUT)
        pods.check_alive()
        assert burst_failures(manifests, finished, pods.pods_per_execution()) == []
    assert active_and_standby(release) == (active, standby)
    active_log, standby_log = log_of(release, active), log_of(release, standby)
    for manifest in manifests:
        assert f"[{release.watched}/{manifest['metadata']['name']}] {STARTED}" in active_log
    assert STARTED not in standby_log  # paused: it has not even listed the Executions
    for log in (active_log, standby_log):
        assert f"Peering in ClusterKopfPeering {release.peering!r} with priority" in log

    # Both pods answer the webhook and /metrics (through the API server's pod proxy, one pod at a time).
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "codeexec.io", "version": "v1alpha1", "kind": "Execution"},
            "resource": {"group": "codeexec.io", "version": "v1alpha1", "resource": "executions"},
            "operation": "CREATE",
            "namespace": release.watched,
            "name": "cobol",
            "object": execution_manifest("cobol", "cobol", "x"),
            "userInfo": {"username": "test"},
        },
    }
    for pod in (active, standby):
        proxy = f"/api/v1/namespaces/{release.namespace}/pods"
        answer = json.loads(
            kubectl(
                "create", "--raw", f"{proxy}/https:{pod}:9443/proxy/{WEBHOOK_ID}", "-f", "-", stdin=json.dumps(review)
            )
        )
        assert answer["response"]["allowed"] is False, pod
        assert "UnknownLanguage" in json.dumps(answer["response"]), pod
        metrics = kubectl("get", "--raw", f"{proxy}/{pod}:9090/proxy/metrics")
        assert "codeexec_executions_in_flight" in metrics, pod


def test_sigkill_of_the_active_mid_burst_loses_nothing_and_starts_nothing_twice(release: Release) -> None:
    """SIGKILL of the active replica's process while a burst runs: a replica handles new Executions within the
    peering lifetime and a little, and every Execution of the burst ends Succeeded with its own stdout, with
    exactly one sandbox pod ever created for each (a pod watch for the whole test).
    Safeguards: the peering lifetime (config.peeringLifetimeSeconds: the dead record expires, the standby
    resumes), and the lifecycle's re-read of pod and Execution with deterministic child names (409 → adopt),
    so what the dead replica started is adopted, not started again. Not run with a safeguard removed: the kubelet
    restarts the killed container within seconds and its new record also lets the standby resume (or makes it
    active again), so neither path alone decides the outcome; the standby-only path was measured with a frozen
    process (README, Replicas and failover); the adoption safeguards are seen failing in tests/e2e/test_chaos.py."""
    active, standby = wait_for_two_peers(release)
    manifests = burst_manifests("kill", 30)
    with EtcdPodCreations(release.watched) as pods:
        create_at_once(release.watched, manifests)
        wait_until(lambda: len(pods.pods_per_execution()) >= 6, BURST_TIMEOUT, "6 sandbox pods of the burst")
        killed = time.monotonic()
        kill_process(release.namespace, active)
        handover = handled_after(release, "after-kill", killed, KILLED_HANDOVER_SECONDS + 30)
        handler = [
            pod for pod in (active, standby) if f"[{release.watched}/after-kill] {STARTED}" in log_of(release, pod)
        ]
        print(f"\nSIGKILL of the active replica → {handler} handled a new Execution after {handover:.1f} s")
        names = [m["metadata"]["name"] for m in manifests] + ["after-kill"]
        finished = wait_all_finished(release.watched, names, BURST_TIMEOUT)
        pods.check_alive()
        after_kill = execution_manifest("after-kill", "python", "print('after-kill')\n")
        failures = burst_failures([*manifests, after_kill], finished, pods.pods_per_execution())
        outcomes = sorted({outcome(item) for item in finished.values()})
        assert not failures, f"{len(failures)} problems (outcomes: {outcomes}):\n" + "\n".join(failures)
    assert handover <= KILLED_HANDOVER_SECONDS, f"handover took {handover:.1f} s"
    # The process really died by SIGKILL (exit 137), and the kubelet restarted it in the same pod.
    (container,) = kubectl_json("get", "pod", active, "-n", release.namespace)["status"]["containerStatuses"]
    assert container["restartCount"] >= 1
    assert container["lastState"]["terminated"]["exitCode"] == 137, container["lastState"]
    # Whichever took over (the standby once the record expired, or the restarted process if it came back first
    # with a higher priority), the two pods peer again with distinct priorities.
    assert set(wait_for_two_peers(release)) == {active, standby}


def test_graceful_delete_of_the_active_hands_over_at_once(release: Release) -> None:
    """`kubectl delete pod` of the active replica: SIGTERM makes Kopf stop and delete its peering record (it does
    not wait to expire), the standby resumes and handles a new Execution within seconds, and the pod exits well
    within terminationGracePeriodSeconds, by itself (not killed by the kubelet at the end of the grace period).
    Safeguards: the Python process is the container's PID 1 with Kopf's SIGTERM handler, Kopf removes its record
    on graceful exit, and the grace period exceeds the time Kopf needs to stop. Seen failing with the operator
    started under `sh -c` (SIGTERM never reached Kopf): the terminating pod kept its record alive through the
    30 s grace period (gone after 40.6 s, exit code 137)."""
    active, standby = wait_for_two_peers(release)
    lifetime_left = (expires(peers(release)[active]) - datetime.now(UTC)).total_seconds()
    with Watch(f"/api/v1/namespaces/{release.namespace}/pods") as operator_pods:
        started = time.monotonic()
        kubectl("delete", "pod", active, "-n", release.namespace, "--wait=false")
        wait_until(lambda: active not in peers(release), 60, f"{active}'s peering record to go")
        released = time.monotonic() - started
        handover = handled_after(release, "after-delete", started, GRACEFUL_HANDOVER_SECONDS + 30)
        print(f"\ngraceful delete: record removed after {released:.1f} s, new Execution handled after {handover:.1f} s")
        wait_until(lambda: exit_code(operator_pods, active) is not None, 60, f"{active} to exit")
        code = exit_code(operator_pods, active)
        exited = time.monotonic() - started
        print(f"graceful delete: {active} exited after {exited:.1f} s with {code}")
    # Removed, not expired: the record was gone while it would still have been valid.
    assert released < lifetime_left, f"record gone after {released:.1f} s, it was valid for {lifetime_left:.1f} s"
    assert handover <= GRACEFUL_HANDOVER_SECONDS, f"handover took {handover:.1f} s"
    assert code == 0, f"{active} exited with {code}"  # 137: killed at the end of the grace period
    assert f"[{release.watched}/after-delete] {STARTED}" in log_of(release, standby)
    wait_for_two_peers(release)  # the Deployment's replacement pod joins as a standby or the new active
