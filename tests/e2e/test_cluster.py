"""e2e: the local cluster is a real Kubernetes: runc and gVisor pods, NetworkPolicy, GC, Service routing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.kube import NetnsHost, kubectl, kubectl_json, pod_finished, wait_until

pytestmark = pytest.mark.e2e
BASE_IMAGE = "localhost/codeexec/base:bookworm"


def run_pod(
    namespace: str,
    name: str,
    script: str,
    runtime_class: str | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[str, str]:
    """Runs `script` with bash in a single-use pod; returns its final phase and its log."""
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {"name": "main", "image": BASE_IMAGE, "imagePullPolicy": "Never", "command": ["bash", "-c", script]}
        ],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": spec,
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    finished = wait_until(lambda: pod_finished(namespace, name), 120, f"pod {name} to finish")
    return finished["status"]["phase"], kubectl("logs", name, "-n", namespace)


def test_node_ready_and_plain_pod_runs_under_runc(namespace: str) -> None:
    node = kubectl_json("get", "nodes")["items"][0]
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    phase, log = run_pod(namespace, "plain", "cat /proc/version")
    assert phase == "Succeeded"
    assert log.startswith("Linux version")
    assert "gvisor" not in log.lower()


def test_gvisor_runtime_class_runs_pod_under_gvisor(namespace: str) -> None:
    runtime_class = kubectl_json("get", "runtimeclass", "gvisor")
    assert runtime_class["handler"] == "runsc"
    phase, log = run_pod(namespace, "sandboxed", "cat /proc/version; dmesg", runtime_class="gvisor")
    assert phase == "Succeeded"
    assert "gvisor" in log.splitlines()[0].lower()
    assert "Starting gVisor" in log


CONNECT = "timeout 5 bash -c 'exec 3<>/dev/tcp/{address}/{port}' && echo CONNECTED || echo BLOCKED"


@pytest.mark.parametrize("runtime_class", [None, "gvisor"])
def test_network_policy_denying_egress_blocks_connection(
    namespace: str, test_host: NetnsHost, runtime_class: str | None
) -> None:
    script = CONNECT.format(address=test_host.address, port=test_host.port)
    _, open_log = run_pod(namespace, "before", script, runtime_class, {"egress": "denied"})
    assert open_log.strip() == "CONNECTED", "the test host must be reachable without a policy"

    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny-egress", "namespace": namespace},
        "spec": {"podSelector": {"matchLabels": {"egress": "denied"}}, "policyTypes": ["Egress"], "egress": []},
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(policy))
    # The enforcer programs a new pod's rules moments after the pod starts, so the pod retries a while.
    settle = f"for attempt in $(seq 20); do ({script}) 2>/dev/null | grep -q BLOCKED && break; sleep 0.5; done; "
    _, denied_log = run_pod(namespace, "after", settle + script, runtime_class, {"egress": "denied"})
    assert denied_log.strip().splitlines()[-1] == "BLOCKED"


def test_deleting_owner_deletes_owned_children(namespace: str) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace)
    owner = kubectl_json("get", "configmap", "owner", "-n", namespace)
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
            ],
        },
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(child))
    kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_until(
        lambda: not kubectl("get", "configmap", "child", "-n", namespace, "--ignore-not-found"),
        60,
        "the garbage collector to delete the child",
    )


def test_kubernetes_service_cluster_ip_reaches_api_server(namespace: str) -> None:
    service_ip = kubectl_json("get", "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    # An HTTP request to the TLS port makes Go's TLS server answer in plain text: proof the API server replied.
    script = f"exec 3<>/dev/tcp/{service_ip}/443 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3"
    phase, log = run_pod(namespace, "to-api", script)
    assert phase == "Succeeded", log
    assert "Client sent an HTTP request to an HTTPS server" in log
