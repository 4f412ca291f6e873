"""The sandbox's ConfigMap, NetworkPolicy and Pod, every security setting asserted explicitly."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from codeexec import builders
from codeexec.builders import ExecutionRef, PinnedHost
from codeexec.config import OperatorConfig
from tests.unit.factories import UID, plan

EXECUTION = ExecutionRef(namespace="team", name="hello", uid=UID)
PROBE = "10.0.0.1:443"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def build_pod(config: OperatorConfig | None = None, **fields: Any) -> dict[str, Any]:
    config = config or OperatorConfig()
    return builders.pod(EXECUTION, plan(config, **fields), config, isolation_probe=PROBE)


def sandbox(pod: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod["spec"]["containers"]
    assert len(containers) == 1
    assert containers[0]["name"] == "sandbox"
    return containers[0]


def test_child_name_is_deterministic_and_dns_safe() -> None:
    assert builders.child_name(EXECUTION) == "hello-0f1e2d3c"
    long = ExecutionRef("team", "a" * 200, UID)
    assert builders.child_name(long) == "a" * 54 + "-0f1e2d3c"
    dotted = ExecutionRef("team", "my.job-" + "x" * 46 + ".y", UID)
    name = builders.child_name(dotted)
    assert DNS_LABEL.match(name), name
    assert len(name) <= 63
    assert builders.child_name(ExecutionRef("team", "-.-", UID)) == "0f1e2d3c"


def test_labels() -> None:
    assert builders.labels(EXECUTION) == {
        "app.kubernetes.io/managed-by": "code-exec",
        "app.kubernetes.io/name": "code-exec-sandbox",
        "codeexec.io/execution": "hello",
        "codeexec.io/execution-uid": UID,
    }


def test_long_execution_names_are_hashed_in_labels() -> None:
    name = "a" * 64
    value = builders.labels(ExecutionRef("team", name, UID))["codeexec.io/execution"]
    assert value != name
    assert len(value) <= 63
    assert value == builders.labels(ExecutionRef("team", name, UID))["codeexec.io/execution"]
    assert builders.labels(ExecutionRef("team", "a" * 63, UID))["codeexec.io/execution"] == "a" * 63


def test_configmap_holds_the_contract_files() -> None:
    the_plan = plan(
        code="print(input)",
        stdin="line\n",
        input={"n": [1, 2]},
        env=[{"name": "A", "value": "1"}, {"name": "B", "value": "two"}],
    )
    configmap = builders.configmap(EXECUTION, the_plan)
    assert configmap["apiVersion"] == "v1"
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"] == {
        "name": "hello-0f1e2d3c",
        "namespace": "team",
        "labels": builders.labels(EXECUTION),
    }
    assert configmap["immutable"] is True
    assert configmap["data"] == {
        "main.py": "print(input)",
        "input.json": '{"n": [1, 2]}',
        "stdin": "line\n",
        "env.json": '{"A": "1", "B": "two"}',
    }


def test_configmap_defaults_for_absent_fields() -> None:
    data = builders.configmap(EXECUTION, plan())["data"]
    assert json.loads(data["input.json"]) is None
    assert data["stdin"] == ""
    assert json.loads(data["env.json"]) == {}


def test_networkpolicy_denies_everything_by_default() -> None:
    policy = builders.networkpolicy(EXECUTION)
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["kind"] == "NetworkPolicy"
    assert policy["metadata"]["name"] == "hello-0f1e2d3c"
    assert policy["metadata"]["namespace"] == "team"
    assert policy["spec"] == {
        "podSelector": {"matchLabels": {"codeexec.io/execution-uid": UID}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [],
    }


def test_networkpolicy_allows_only_pinned_addresses_and_ports() -> None:
    pinned = [
        PinnedHost("api.example.com", 8443, ("93.184.216.34", "2606:2800:220:1::1")),
        PinnedHost("example.org", None, ("93.184.216.35",)),
    ]
    policy = builders.networkpolicy(EXECUTION, pinned)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"codeexec.io/execution-uid": UID}}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == []
    assert spec["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "93.184.216.34/32"}}, {"ipBlock": {"cidr": "2606:2800:220:1::1/128"}}],
            "ports": [{"protocol": "TCP", "port": 8443}],
        },
        # No port given: HTTPS and HTTP only.
        {
            "to": [{"ipBlock": {"cidr": "93.184.216.35/32"}}],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 80}],
        },
    ]
    # Single addresses only, never a wider block; TCP only (no UDP, so no DNS even to an allowed host).
    for rule in spec["egress"]:
        assert all(block["ipBlock"]["cidr"].endswith(("/32", "/128")) for block in rule["to"])
        assert all("except" not in block["ipBlock"] for block in rule["to"])
        assert all(port["protocol"] == "TCP" for port in rule["ports"])


def test_pod_identity_and_lifecycle() -> None:
    pod = build_pod(timeoutSeconds=45)
    assert pod["apiVersion"] == "v1"
    assert pod["kind"] == "Pod"
    assert pod["metadata"] == {
        "name": "hello-0f1e2d3c",
        "namespace": "team",
        "labels": builders.labels(EXECUTION),
    }
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    # The timeout, the runner's wait for network isolation, then the grace.
    assert spec["activeDeadlineSeconds"] == 45 + 20 + 30
    assert spec["terminationGracePeriodSeconds"] == 2


def test_pod_security_settings() -> None:
    spec = build_pod()["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["hostNetwork"] is False
    assert spec["hostPID"] is False
    assert spec["hostIPC"] is False
    assert spec["shareProcessNamespace"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65534,
        "runAsGroup": 65534,
        "fsGroup": 65534,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for absent in ("nodeName", "nodeSelector", "serviceAccountName", "serviceAccount", "hostUsers", "initContainers"):
        assert absent not in spec, absent


def test_pod_has_no_usable_dns() -> None:
    spec = build_pod()["spec"]
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"] == {"nameservers": ["127.0.0.1"]}
    assert spec["hostAliases"] == []


def test_pod_pins_allowed_hosts() -> None:
    config = OperatorConfig()
    pinned = [
        PinnedHost("api.example.com", 443, ("93.184.216.34", "93.184.216.35")),
        PinnedHost("api.example.com", 8080, ("93.184.216.34", "93.184.216.35")),
        PinnedHost("cdn.example.com", None, ("93.184.216.35", "2606:2800:220:1::1")),
    ]
    pod = builders.pod(EXECUTION, plan(config), config, pinned, isolation_probe=PROBE)
    assert pod["spec"]["hostAliases"] == [
        {"ip": "93.184.216.34", "hostnames": ["api.example.com"]},
        {"ip": "93.184.216.35", "hostnames": ["api.example.com", "cdn.example.com"]},
        {"ip": "2606:2800:220:1::1", "hostnames": ["cdn.example.com"]},
    ]
    assert pod["spec"]["dnsPolicy"] == "None"
    assert pod["spec"]["dnsConfig"] == {"nameservers": ["127.0.0.1"]}


def test_container_security_settings() -> None:
    container = sandbox(build_pod())
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for absent in ("env", "envFrom", "ports", "stdin", "tty", "lifecycle", "volumeDevices"):
        assert absent not in container, absent


def test_container_runs_the_runner_per_the_contract() -> None:
    container = sandbox(build_pod(timeoutSeconds=12, args=["--flag", "value"]))
    assert container["image"] == "localhost/codeexec/python:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["/opt/codeexec/runner"]
    assert container["args"] == [
        "--timeout-seconds",
        "12",
        "--max-output-bytes",
        "65536",
        "--isolation-probe",
        "10.0.0.1:443",
        "--isolation-wait-seconds",
        "20",
        "--stdin",
        "/code/stdin",
        "--input",
        "/code/input.json",
        "--env-file",
        "/code/env.json",
        "--",
        "python3",
        "/opt/codeexec/harness.py",
        "/code/main.py",
        "--flag",
        "value",
    ]
    assert container["workingDir"] == "/tmp"


def test_runtime_pull_policy_wins_over_the_operator_default() -> None:
    config = OperatorConfig(image_pull_policy="Never")
    assert sandbox(build_pod(config))["imagePullPolicy"] == "Never"


def test_container_resources_are_guaranteed_and_bounded() -> None:
    container = sandbox(build_pod(resources={"cpu": "0.25", "memory": "1G"}))
    expected = {"cpu": "250m", "memory": "1000000000", "ephemeral-storage": "128Mi"}
    assert container["resources"] == {"requests": expected, "limits": expected}


def test_volumes_are_read_only_code_and_bounded_tmp() -> None:
    pod = build_pod(config=OperatorConfig(tmp_size="32Mi"))
    assert pod["spec"]["volumes"] == [
        {"name": "code", "configMap": {"name": "hello-0f1e2d3c", "defaultMode": 0o444}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "32Mi"}},
    ]
    assert sandbox(pod)["volumeMounts"] == [
        {"name": "code", "mountPath": "/code", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    for volume in pod["spec"]["volumes"]:
        assert "hostPath" not in volume


def test_runtime_class_is_omitted_only_when_switched_off() -> None:
    assert "runtimeClassName" not in build_pod(OperatorConfig(runtime_class=""))["spec"]
    assert build_pod(OperatorConfig(runtime_class="kata"))["spec"]["runtimeClassName"] == "kata"


@pytest.mark.parametrize("field", ["image", "nodeName", "serviceAccountName", "runtimeClassName", "privileged"])
def test_spec_cannot_reach_pod_fields(field: str) -> None:
    with pytest.raises(AssertionError, match="Extra inputs are not permitted"):
        build_pod(**{field: "x"})
