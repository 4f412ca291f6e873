"""The sandbox's ConfigMap, bindings Secret, NetworkPolicy and Pod, every security setting asserted explicitly."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from codeexec import bindingtoken, builders
from codeexec.bindings import Broker, BrokerAccess
from codeexec.builders import ExecutionRef, PinnedHost, PoolRef
from codeexec.config import OperatorConfig
from codeexec.models import RuntimeSpec
from tests.unit.factories import PYTHON, UID, plan, python_runtime

EXECUTION = ExecutionRef(namespace="team", name="hello", uid=UID)
POOL = PoolRef(namespace="team", name="python-pool", uid="9a8b7c6d-0000-4000-8000-000000000001")
PROBE = "10.0.0.1:443"
BROKER = Broker("codeexec-system", "10.96.0.57", 8080, 8081, {"app": "broker", "instance": "code-exec"})
WITH_BROKER = OperatorConfig(broker_service="codeexec-system/code-exec-broker")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def build_pod(
    config: OperatorConfig | None = None, granted: dict[str, str] | None = None, **fields: Any
) -> dict[str, Any]:
    config = config or OperatorConfig()
    return builders.pod(EXECUTION, plan(config, granted, **fields), config, isolation_probe=PROBE)


def build_warm_pod(config: OperatorConfig | None = None, **fields: Any) -> dict[str, Any]:
    """A pool's pod of the size an Execution with `fields` would get."""
    config = config or OperatorConfig()
    the_plan = plan(config, **fields)
    return builders.warm_pod(POOL, the_plan.runtime, the_plan.cpu_millis, the_plan.memory_bytes, config, PROBE)


# Every sandbox pod, cold or warm, meets the same contract: the security tests run on both.
SANDBOX_KINDS = {"cold": build_pod, "warm": build_warm_pod}
each_kind = pytest.mark.parametrize("build", list(SANDBOX_KINDS.values()), ids=list(SANDBOX_KINDS))


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


def test_bindings_secret_says_how_to_reach_the_broker() -> None:
    """bindings.json (the token) is in a Secret of the sandbox's name, which the built-in `view` role cannot read;
    the ConfigMap, which it can, holds no token."""
    token = bindingtoken.mint(b"k" * 32, "team", "hello", UID)
    the_plan = plan(WITH_BROKER, {"notes": "db", "audit": "db"}, bindings=["notes", "audit"])
    secret = builders.bindings_secret(EXECUTION, the_plan, BrokerAccess(BROKER, token))
    assert secret["apiVersion"] == "v1"
    assert secret["kind"] == "Secret"
    assert secret["metadata"] == {
        "name": "hello-0f1e2d3c",
        "namespace": "team",
        "labels": builders.labels(EXECUTION),
    }
    assert secret["type"] == "Opaque"
    assert secret["immutable"] is True
    assert set(secret) == {"apiVersion", "kind", "metadata", "type", "immutable", "stringData"}
    assert list(secret["stringData"]) == ["bindings.json"]
    assert json.loads(secret["stringData"]["bindings.json"]) == {
        "url": "http://10.96.0.57:8080",  # the Service's address and port: sandboxes have no DNS
        "token": token,
        "execution": "team/hello",
        "bindings": {"notes": "db", "audit": "db"},
    }
    assert len(token) == 43
    configmap = builders.configmap(EXECUTION, the_plan)
    assert sorted(configmap["data"]) == ["env.json", "input.json", "main.py", "stdin"]
    assert token not in json.dumps(configmap)


def test_broker_url_of_an_ipv6_service_has_brackets() -> None:
    assert Broker("ns", "fd00::57", 8080, 8080, {"a": "b"}).url == "http://[fd00::57]:8080"


def test_networkpolicy_of_an_execution_with_bindings_adds_only_the_brokers_pods() -> None:
    """One more egress rule: the broker's pods (its namespace by name, the Service's selector) on their own port;
    nothing else of the cluster, no ingress."""
    pinned = [PinnedHost("example.org", None, ("93.184.216.35",))]
    spec = builders.networkpolicy(EXECUTION, pinned, BROKER)["spec"]
    assert spec["ingress"] == []
    assert spec["egress"][0] == builders.networkpolicy(EXECUTION, pinned)["spec"]["egress"][0]
    assert spec["egress"][1:] == [
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "codeexec-system"}},
                    "podSelector": {"matchLabels": {"app": "broker", "instance": "code-exec"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8081}],  # the pods' port, not the Service's
        }
    ]


def test_runner_of_an_execution_with_bindings_reads_the_bindings_file() -> None:
    the_plan = plan(WITH_BROKER, {"notes": "db"}, bindings=["notes"])
    args = builders.runner_args(the_plan, WITH_BROKER, isolation_probe=PROBE)
    without = builders.runner_args(plan(WITH_BROKER), WITH_BROKER, isolation_probe=PROBE)
    at = without.index("--")
    assert args == [*without[:at], "--bindings-file", "/code/bindings.json", *without[at:]]


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
    assert spec["activeDeadlineSeconds"] == 45 + 60 + 30
    assert spec["terminationGracePeriodSeconds"] == 2


@each_kind
def test_pod_security_settings(build: Callable[..., dict[str, Any]]) -> None:
    spec = build()["spec"]
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


@each_kind
def test_pod_has_no_usable_dns(build: Callable[..., dict[str, Any]]) -> None:
    spec = build()["spec"]
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


@each_kind
def test_container_security_settings(build: Callable[..., dict[str, Any]]) -> None:
    container = sandbox(build())
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for absent in ("env", "envFrom", "ports", "lifecycle", "volumeDevices", "livenessProbe", "readinessProbe"):
        assert absent not in container, absent


def test_cold_container_has_no_stdin_or_tty() -> None:
    container = sandbox(build_pod())
    for absent in ("stdin", "stdinOnce", "tty", "startupProbe"):
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
        "60",
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


@each_kind
def test_container_resources_are_guaranteed_and_bounded(build: Callable[..., dict[str, Any]]) -> None:
    container = sandbox(build(resources={"cpu": "0.25", "memory": "1G"}))
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


def test_code_volume_of_an_execution_with_bindings_projects_the_configmap_and_the_secret() -> None:
    """One volume at /code (the pod has no more volumes than others): the ConfigMap's files and the Secret's
    bindings.json, read-only, where the runner's --bindings-file points."""
    pod = build_pod(WITH_BROKER, {"notes": "db"}, bindings=["notes"])
    assert pod["spec"]["volumes"] == [
        {
            "name": "code",
            "projected": {
                "defaultMode": 0o444,
                "sources": [{"configMap": {"name": "hello-0f1e2d3c"}}, {"secret": {"name": "hello-0f1e2d3c"}}],
            },
        },
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    assert sandbox(pod)["volumeMounts"] == sandbox(build_pod())["volumeMounts"]
    args = sandbox(pod)["args"]
    assert args[args.index("--bindings-file") + 1] == "/code/bindings.json"


@each_kind
def test_runtime_class_is_omitted_only_when_switched_off(build: Callable[..., dict[str, Any]]) -> None:
    assert "runtimeClassName" not in build(OperatorConfig(runtime_class=""))["spec"]
    assert build(OperatorConfig(runtime_class="kata"))["spec"]["runtimeClassName"] == "kata"


@pytest.mark.parametrize("field", ["image", "nodeName", "serviceAccountName", "runtimeClassName", "privileged"])
def test_spec_cannot_reach_pod_fields(field: str) -> None:
    with pytest.raises(AssertionError, match="Extra inputs are not permitted"):
        build_pod(**{field: "x"})


def test_warm_pod_identity_and_ownership() -> None:
    """Fails with a fixed pod name (a pool's pods would collide) or without the owner (deleting the pool would
    leave its idle pods)."""
    pod = build_warm_pod()
    assert pod["apiVersion"] == "v1"
    assert pod["kind"] == "Pod"
    metadata = pod["metadata"]
    assert "name" not in metadata
    assert metadata["generateName"] == "python-pool-"
    assert metadata["namespace"] == "team"
    assert metadata["labels"] == {
        "app.kubernetes.io/managed-by": "code-exec",
        "app.kubernetes.io/name": "code-exec-sandbox",
        "codeexec.io/pool": "python-pool",
        "codeexec.io/template-hash": builders.warm_template_hash(
            plan().runtime, 500, 256 * 1024**2, OperatorConfig(), PROBE
        ),
    }
    # Never the Execution's uid label: that marks a claimed pod, and only the claim sets it.
    assert "codeexec.io/execution-uid" not in metadata["labels"]
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "codeexec.io/v1alpha1",
            "kind": "WarmPool",
            "name": "python-pool",
            "uid": POOL.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    long = builders.warm_pod(PoolRef("team", "p" * 100, POOL.uid), PYTHON, 500, 2**28, OperatorConfig(), PROBE)
    assert long["metadata"]["generateName"] == "p" * 57 + "-"
    assert len(long["metadata"]["labels"]["codeexec.io/pool"]) <= 63


def test_warm_pod_lifecycle_leaves_the_deadline_to_the_claim() -> None:
    spec = build_warm_pod()["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["terminationGracePeriodSeconds"] == 2
    # The claim sets it (once set, it can only be lowered): an idle pod waits as long as it must.
    assert "activeDeadlineSeconds" not in spec


def test_warm_container_waits_for_its_request_on_stdin() -> None:
    container = sandbox(build_warm_pod())
    assert (container["stdin"], container["stdinOnce"], container["tty"]) == (True, False, False)
    assert container["image"] == "localhost/codeexec/python:0.1.0"
    assert container["command"] == ["/opt/codeexec/runner"]
    assert container["args"] == [
        "--warm",
        "--max-output-bytes",
        "65536",
        "--isolation-probe",
        "10.0.0.1:443",
        "--isolation-wait-seconds",
        "60",
        "--",
        "python3",
        "/opt/codeexec/harness.py",
    ]
    assert container["workingDir"] == "/tmp"
    # Ready (offered to Executions) only once the runner saw the NetworkPolicy in force and preloaded.
    assert container["startupProbe"] == {
        "exec": {"command": ["test", "-e", "/tmp/.codeexec/ready"]},
        "periodSeconds": 1,
        "failureThreshold": 60 + 30,
    }


def test_warm_pod_has_no_code_volume() -> None:
    pod = build_warm_pod(config=OperatorConfig(tmp_size="32Mi"))
    assert pod["spec"]["volumes"] == [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "32Mi"}}]
    assert sandbox(pod)["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_warm_and_cold_pods_share_every_security_setting() -> None:
    """One code path: the pod specs differ only where warm and cold must; fails when a setting is added to one
    kind of pod only."""
    cold, warm = build_pod()["spec"], build_warm_pod()["spec"]
    cold_container, warm_container = cold.pop("containers")[0], warm.pop("containers")[0]
    assert {key for key in cold if cold[key] != warm.get(key)} == {"activeDeadlineSeconds", "volumes"}
    assert set(warm) - set(cold) == set()
    differing = {key for key in cold_container | warm_container if cold_container.get(key) != warm_container.get(key)}
    assert differing == {"args", "volumeMounts", "stdin", "stdinOnce", "tty", "startupProbe"}


def test_template_hash_changes_with_what_the_pod_runs_and_only_then() -> None:
    """Fails when the hash leaves out what a pod runs (e.g. the image: a Runtime's new image would never roll
    the pool, and an Execution would claim a pod of the old image)."""
    config = OperatorConfig()

    def digest(runtime: RuntimeSpec = PYTHON, cpu: int = 500, memory: int = 2**28, **settings: Any) -> str:
        return builders.warm_template_hash(
            runtime, cpu, memory, OperatorConfig(**settings) if settings else config, PROBE
        )

    base = digest()
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert digest() == base  # stable
    assert builders.warm_template_hash(PYTHON, 500, 2**28, config, PROBE) == base
    changed = [
        digest(python_runtime(image="localhost/codeexec/python:0.2.0")),
        digest(python_runtime(command=["python3", "-X", "dev", "/opt/codeexec/harness.py"])),
        digest(python_runtime(imagePullPolicy="Always")),
        digest(cpu=250),
        digest(memory=2**29),
        digest(runtime_class="kata"),
        digest(max_output_bytes=2048),
        digest(tmp_size="32Mi"),
        builders.warm_template_hash(PYTHON, 500, 2**28, config, "10.0.0.2:443"),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    # What only Executions choose (their timeout) or only the pool's metadata holds does not change it.
    assert digest(python_runtime(fileName="app.py", defaultTimeoutSeconds=5, aliases=[])) == base


def test_pool_selector() -> None:
    assert builders.pool_selector("python-pool") == "codeexec.io/pool=python-pool"


def test_warm_networkpolicy_denies_everything_to_every_pool_pod() -> None:
    policy = builders.warm_networkpolicy("team")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["kind"] == "NetworkPolicy"
    assert policy["metadata"] == {
        "name": "codeexec-warm-sandboxes",
        "namespace": "team",
        "labels": {"app.kubernetes.io/managed-by": "code-exec", "app.kubernetes.io/name": "code-exec-sandbox"},
    }
    # No owner: a claimed pod outlives its pool and stays fenced.
    assert "ownerReferences" not in policy["metadata"]
    assert policy["spec"] == {
        "podSelector": {"matchExpressions": [{"key": "codeexec.io/pool", "operator": "Exists"}]},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [],
    }
