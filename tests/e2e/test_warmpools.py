"""e2e: the WarmPool controller on the real cluster (the session's local operator, gVisor, kube-router): a pool
fills and shows in kubectl, is fenced before its first pod, replaces a pod that died or was deleted, scales,
rolls on a Runtime's new image, goes with its idle pods; idle pods use about no CPU (memory reported)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.executions import API_VERSION, EXECUTION_UID_LABEL, StartOperator, Watch
from tests.e2e.kube import ENV, kubectl, kubectl_json, kubectl_run, wait_until
from tests.e2e.sandbox_facts import assert_sandbox_pod_spec

pytestmark = pytest.mark.e2e

POOL_LABEL = "codeexec.io/pool"
TEMPLATE_HASH_LABEL = "codeexec.io/template-hash"
NETWORKPOLICY = "codeexec-warm-sandboxes"
# A pool pod's start on the 2-core node shared with other tests: gVisor's sandbox, the isolation probe's wait
# for kube-router, the interpreter's preload.
READY_TIMEOUT = 120
# Small pods: the node's 2 CPUs are shared with every other test running meanwhile.
SMALL = {"cpu": "100m", "memory": "192Mi"}
# An idle pool pod waits on a read of its stdin: well below this (the kubelet's figure includes gVisor's own).
IDLE_CPU_MILLICORES = 20


def apply_pool(namespace: str, name: str, runtime: str, replicas: int, resources: dict[str, str] = SMALL) -> None:
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "WarmPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"runtime": runtime, "replicas": replicas, "resources": resources},
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def pool_pods(namespace: str, pool: str) -> list[dict[str, Any]]:
    """The pool's idle pods not being deleted (a deleted pod's last seconds do not count)."""
    selector = f"{POOL_LABEL}={pool},!{EXECUTION_UID_LABEL}"
    pods: list[dict[str, Any]] = kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def wait_pool(namespace: str, pool: str, replicas: int, timeout: float = READY_TIMEOUT) -> list[dict[str, Any]]:
    """The pool's idle pods once exactly `replicas` exist, all Ready, and its status says so."""

    def settled() -> tuple[list[dict[str, Any]]] | None:  # a tuple: no pods at all is an answer too
        pods = pool_pods(namespace, pool)
        if len(pods) != replicas or not all(ready(pod) for pod in pods):
            return None
        status = kubectl_json("get", "warmpool", pool, "-n", namespace).get("status", {})
        return (pods,) if (status.get("replicas"), status.get("readyReplicas")) == (replicas, replicas) else None

    try:
        return wait_until(settled, timeout, f"WarmPool {pool} to hold {replicas} ready pods", interval=0.5)[0]
    except AssertionError as error:
        phases = [(p["metadata"]["name"], p["status"].get("phase"), ready(p)) for p in pool_pods(namespace, pool)]
        status = kubectl_json("get", "warmpool", pool, "-n", namespace).get("status")
        raise AssertionError(f"{error}; pods now: {phases}; status: {status}") from None


def names(pods: list[dict[str, Any]]) -> set[str]:
    return {pod["metadata"]["name"] for pod in pods}


@pytest.fixture
def pools(op_namespace: str) -> Iterator[str]:
    """The namespace; its pools deleted at the end, and their idle pods with them."""
    yield op_namespace
    kubectl("delete", "warmpools", "--all", "-n", op_namespace, "--timeout=60s", check=False, timeout=90)


def test_pool_fills_fenced_first_and_kubectl_shows_it(pools: str) -> None:
    """Two Ready pods; `kubectl get warmpools` shows Runtime, Desired, Ready; the deny-all NetworkPolicy existed
    before the first pod (etcd's revisions order them); every security field of a live pool pod."""
    namespace = pools
    with Watch(f"/api/v1/namespaces/{namespace}/pods") as pods_seen:
        apply_pool(namespace, "py", "python", 2)
        filled = wait_pool(namespace, "py", 2)
    table = kubectl("get", "warmpools", "-n", namespace).splitlines()
    assert table[0].split() == ["NAME", "RUNTIME", "DESIRED", "READY", "AGE"], table
    assert table[1].split()[:4] == ["py", "python", "2", "2"], table
    condition = kubectl_json("get", "wp", "py", "-n", namespace)["status"]["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == ("Ready", "True", "Ready")

    policy = kubectl_json("get", "networkpolicy", NETWORKPOLICY, "-n", namespace)
    assert policy["spec"]["podSelector"] == {"matchExpressions": [{"key": POOL_LABEL, "operator": "Exists"}]}
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not policy["spec"].get("ingress") and not policy["spec"].get("egress")
    assert not policy["metadata"].get("ownerReferences")  # outlives the pools (claimed pods stay fenced)
    # A resourceVersion is etcd's revision at the write: the policy (never changed since) was written before
    # any pod of the pool was created (each pod's first version seen).
    created = {uid: int(pod["metadata"]["resourceVersion"]) for uid, pod in pods_seen.objects().items()}
    assert created and min(created.values()) > int(policy["metadata"]["resourceVersion"])

    for pod in filled:
        spec = pod["spec"]
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "WarmPool"
        # Idle: no deadline yet (the claim sets it, counted from the claim); otherwise every sandbox's spec.
        assert "activeDeadlineSeconds" not in spec
        assert_sandbox_pod_spec({**spec, "activeDeadlineSeconds": 10**6}, timeout_seconds=0, warm=True)
        [container] = spec["containers"]
        assert (container["stdin"], container.get("stdinOnce", False), container.get("tty", False)) == (
            True,
            False,
            False,
        )
        assert container["args"][0] == "--warm"
        assert container["resources"]["limits"] == {**SMALL, "ephemeral-storage": "128Mi"}


def test_a_pod_that_died_or_was_deleted_is_replaced(pools: str) -> None:
    """A pod whose runner got an invalid request (it exits, the pod fails) and a deleted pod are replaced."""
    namespace = pools
    apply_pool(namespace, "py", "python", 2)
    first = wait_pool(namespace, "py", 2)
    dead, deleted = sorted(names(first))
    # The runner reads one request line from its stdin; garbage ends it (EXIT_NO_REQUEST) without running anything.
    attach = subprocess.run(
        ["kubectl", "attach", "-i", "-n", namespace, dead, "-c", "sandbox"],
        input="not a request\n",
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert attach.returncode in (0, 1), attach.stderr  # kubectl may report the container's exit
    kubectl("delete", "pod", deleted, "-n", namespace, "--wait=false")
    second = wait_until(
        lambda: pods if not names(pods := wait_pool(namespace, "py", 2)) & {dead, deleted} else None,
        READY_TIMEOUT,
        "both pods to be replaced",
    )
    assert len(second) == 2
    # The failed pod was deleted by the pool, not left behind.
    wait_until(lambda: kubectl_run("get", "pod", dead, "-n", namespace).returncode != 0, 60, f"{dead} to go")


def test_scale_down_then_up(pools: str) -> None:
    namespace = pools
    apply_pool(namespace, "py", "python", 3)
    three = wait_pool(namespace, "py", 3)
    apply_pool(namespace, "py", "python", 1)
    one = wait_pool(namespace, "py", 1)
    assert names(one) < names(three)  # scaling down deletes, never recreates
    apply_pool(namespace, "py", "python", 2)
    two = wait_pool(namespace, "py", 2)
    assert names(one) < names(two)
    apply_pool(namespace, "py", "python", 0)
    wait_pool(namespace, "py", 0)


@pytest.fixture
def own_runtime() -> Iterator[str]:
    """A Runtime of this test alone (Runtimes are cluster-wide: changing a bundled one would disturb other tests),
    as the bundled javascript one."""
    name = f"e2e-wp-{uuid.uuid4().hex[:8]}"
    runtime = kubectl_json("get", "runtime", "javascript")
    manifest = {"apiVersion": API_VERSION, "kind": "Runtime", "metadata": {"name": name}, "spec": runtime["spec"]}
    manifest["spec"]["aliases"] = []
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    yield name
    kubectl("delete", "runtime", name, "--ignore-not-found")


def test_a_runtime_image_change_rolls_the_idle_pods(pools: str, own_runtime: str) -> None:
    """The typescript image holds the same node and harness: the pool's pods are replaced by Ready pods of it."""
    namespace = pools
    apply_pool(namespace, "js", own_runtime, 2)
    before = wait_pool(namespace, "js", 2)
    patch = json.dumps({"spec": {"image": "localhost/codeexec/typescript:0.1.0"}})
    kubectl("patch", "runtime", own_runtime, "--type=merge", "-p", patch)
    after = wait_until(
        lambda: pods if not names(pods := wait_pool(namespace, "js", 2)) & names(before) else None,
        READY_TIMEOUT * 2,
        "the pool to roll to the new image",
    )
    assert {pod["spec"]["containers"][0]["image"] for pod in after} == {"localhost/codeexec/typescript:0.1.0"}
    hashes = {pod["metadata"]["labels"][TEMPLATE_HASH_LABEL] for pod in before + after}
    assert len(hashes) == 2


def test_deleting_the_pool_deletes_its_idle_pods_and_keeps_the_fence(pools: str) -> None:
    namespace = pools
    apply_pool(namespace, "py", "python", 2)
    wait_pool(namespace, "py", 2)
    kubectl("delete", "warmpool", "py", "-n", namespace, "--timeout=60s")
    wait_until(lambda: not pool_pods(namespace, "py"), 60, "the pool's pods to go")
    # Documented: the namespace's fence stays for pods claimed from any pool (and pools to come).
    kubectl("get", "networkpolicy", NETWORKPOLICY, "-n", namespace)


def test_a_quota_refusal_is_reported_and_retried(pools: str) -> None:
    """Pool pods count against the namespace's ResourceQuota: the pool holds what the quota allows, says why in
    its condition (the API server's message), and fills once the quota grows (its timer retries)."""
    namespace = pools
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods", "namespace": namespace}}
    quota["spec"] = {"hard": {"pods": "1"}}
    kubectl("apply", "-f", "-", stdin=json.dumps(quota))
    apply_pool(namespace, "py", "python", 2)

    def refused() -> dict[str, Any] | None:
        conditions = kubectl_json("get", "wp", "py", "-n", namespace).get("status", {}).get("conditions") or []
        return conditions[0] if conditions and conditions[0]["reason"] == "CreateRefused" else None

    condition = wait_until(refused, 60, "the pool to report the quota's refusal")
    assert condition["status"] == "False"
    assert "exceeded quota" in condition["message"], condition
    assert len(pool_pods(namespace, "py")) == 1
    quota["spec"] = {"hard": {"pods": "5"}}
    kubectl("apply", "-f", "-", stdin=json.dumps(quota))
    wait_pool(namespace, "py", 2)


def test_an_operator_restart_neither_loses_nor_doubles_pool_pods(own_operator: StartOperator) -> None:
    """SIGKILL of the operator, a pool pod deleted while it is down, a restart: the pool resumes with exactly one
    new pod (every pod ever created is counted from a watch), and the pod that survived is kept."""
    own = own_operator(1)
    namespace = own.namespaces[0]
    with Watch(f"/api/v1/namespaces/{namespace}/pods") as pods_seen:
        apply_pool(namespace, "py", "python", 2)
        kept, lost = sorted(names(wait_pool(namespace, "py", 2)))
        own.process.kill()
        kubectl("delete", "pod", lost, "-n", namespace, "--wait=false")
        own.process.start()
        after = wait_pool(namespace, "py", 2)
        pods_seen.check_alive()
        created = {pod["metadata"]["name"] for pod in pods_seen.objects().values()}
    assert kept in names(after) and lost not in names(after)
    assert len(created) == 3, sorted(created)


def test_an_unknown_runtime_is_reported(pools: str) -> None:
    namespace = pools
    apply_pool(namespace, "nope", "cobol", 1)

    def reason() -> str | None:
        conditions = kubectl_json("get", "wp", "nope", "-n", namespace).get("status", {}).get("conditions") or []
        return conditions[0]["reason"] if conditions else None

    assert wait_until(reason, 30, "the pool's condition") == "UnknownRuntime"
    assert not pool_pods(namespace, "nope")


def test_idle_pods_use_about_no_cpu(pools: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each Ready idle pod (python, javascript, typescript) over at least 10 s of the kubelet's samples: CPU about
    0; memory printed (the kubelet's container working set, from gVisor's shim, and the pod's cgroup on the node,
    gVisor's own processes included). Fails when a warm runner polls instead of blocking on its stdin."""
    namespace = pools
    runtimes = ("python", "javascript", "typescript")
    for runtime in runtimes:
        apply_pool(namespace, runtime, runtime, 1, {"cpu": "250m", "memory": "256Mi"})
    idle = {runtime: wait_pool(namespace, runtime, 1, READY_TIMEOUT * 2)[0] for runtime in runtimes}
    node = idle["python"]["spec"]["nodeName"]

    def sample() -> dict[str, dict[str, Any]] | None:
        """The sandbox container's stats of every idle pod (the kubelet's pod-level figures of a gVisor pod are 0)."""
        summary = json.loads(kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/stats/summary"))
        containers = {
            pod["podRef"]["name"]: pod["containers"][0]
            for pod in summary["pods"]
            if pod["podRef"]["namespace"] == namespace and pod.get("containers")
        }
        found = {runtime: containers.get(pod["metadata"]["name"]) for runtime, pod in idle.items()}
        usable = all(stats and stats.get("cpu", {}).get("usageCoreNanoSeconds") is not None for stats in found.values())
        return found if usable else None  # type: ignore[return-value]

    def seconds(stats: dict[str, Any]) -> float:
        return datetime.fromisoformat(stats["cpu"]["time"]).timestamp()

    first = wait_until(sample, 60, "the kubelet's stats of the idle pods", interval=1)
    last = wait_until(
        lambda: (
            later
            if (later := sample()) and all(seconds(later[r]) - seconds(first[r]) >= 10 for r in runtimes)
            else None
        ),
        90,
        "10 s more of the kubelet's samples",
        interval=2,
    )
    millicores = {
        runtime: (last[runtime]["cpu"]["usageCoreNanoSeconds"] - first[runtime]["cpu"]["usageCoreNanoSeconds"])
        / (seconds(last[runtime]) - seconds(first[runtime]))
        / 1e6
        for runtime in runtimes
    }
    with capsys.disabled():
        for runtime in runtimes:
            working_set = last[runtime]["memory"]["workingSetBytes"] / 2**20
            cgroup = pod_cgroup_memory(idle[runtime]["metadata"]["uid"])
            node_view = f"{cgroup / 2**20:.1f} MiB" if cgroup is not None else "not found"
            print(
                f"\nidle {runtime} pool pod: cpu {millicores[runtime]:.2f} millicores over "
                f"{seconds(last[runtime]) - seconds(first[runtime]):.0f} s; memory: container working set "
                f"{working_set:.1f} MiB, pod cgroup {node_view}"
            )
    for runtime in runtimes:
        assert millicores[runtime] < IDLE_CPU_MILLICORES, millicores


def pod_cgroup_memory(pod_uid: str) -> int | None:
    """The node's memory charge of a pod (the kubelet's cgroupfs layout, cgroup v1 or v2; this test runs on the
    node), or None if not found."""
    root = Path("/sys/fs/cgroup")
    for pattern in ("memory/kubepods*/pod{}", "memory/kubepods*/*/pod{}", "kubepods*/pod{}", "kubepods*/*/pod{}"):
        for path in root.glob(pattern.format(pod_uid)):
            for name in ("memory.usage_in_bytes", "memory.current"):
                if (path / name).is_file():
                    return int((path / name).read_text())
    return None
