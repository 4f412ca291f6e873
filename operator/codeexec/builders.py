"""Builds the sandbox's ConfigMap, bindings Secret, NetworkPolicy and Pod (cold, or warm for a pool) as plain dicts,
without I/O."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from codeexec.bindings import Broker, BrokerAccess
from codeexec.config import OperatorConfig
from codeexec.egress import PinnedHost
from codeexec.models import DEFAULT_DOMAIN_PORTS, GROUP, VERSION, RuntimeSpec
from codeexec.validation import Plan, format_cpu, format_memory
from codeexec.vocabulary import (
    EXECUTION_LABEL,
    EXECUTION_UID_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    POOL_LABEL,
    SANDBOX_CONTAINER,
    SANDBOX_NAME,
    TEMPLATE_HASH_LABEL,
    WARM_NETWORKPOLICY,
)
from codeexec_runner import contract

CODE_DIR = "/code"
TMP_DIR = "/tmp"
NOBODY = 65534
# The runner kills the whole process tree itself; the kubelet need not wait long.
TERMINATION_GRACE_SECONDS = 2
# Nothing listens there inside the pod: name resolution fails, no DNS query leaves.
UNUSABLE_NAMESERVER = "127.0.0.1"
MAX_LABEL_VALUE = 63
# The API server cuts a generateName to 58 characters (then adds 5 random ones): the stem before the dash.
MAX_GENERATE_NAME = 57
# Hex digits of a warm pod's template hash (TEMPLATE_HASH_LABEL).
TEMPLATE_HASH_LENGTH = 16
# What a warm pod's startupProbe allows beyond the isolation probe's wait: the harness's preload.
WARM_START_SECONDS = 30


@dataclass(frozen=True)
class ExecutionRef:
    """Identity of the Execution that owns the sandbox."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class PoolRef:
    """Identity of the WarmPool that owns an idle sandbox."""

    namespace: str
    name: str
    uid: str


def child_name(execution: ExecutionRef) -> str:
    """Deterministic name of every object made for an Execution: a DNS label of ≤ 63 chars."""
    stem = re.sub(r"[^a-z0-9-]", "-", execution.name[:54].lower()).strip("-")
    return f"{stem}-{execution.uid[:8]}" if stem else execution.uid[:8]


def labels(execution: ExecutionRef) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        NAME_LABEL: SANDBOX_NAME,
        EXECUTION_LABEL: _label_value(execution.name),
        EXECUTION_UID_LABEL: execution.uid,
    }


def configmap(execution: ExecutionRef, plan: Plan) -> dict[str, Any]:
    """The files of the runner contract, mounted read-only at /code."""
    spec = plan.spec
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(execution),
        "immutable": True,
        "data": {
            plan.runtime.file_name: spec.code,
            "input.json": spec.input_json(),
            "stdin": spec.stdin or "",
            "env.json": spec.env_json(),
        },
    }


def bindings_secret(execution: ExecutionRef, plan: Plan, access: BrokerAccess) -> dict[str, Any]:
    """bindings.json of an Execution with bindings, mounted at /code beside the ConfigMap's files. A Secret, not
    the ConfigMap: its token grants the bindings while the Execution runs, and the built-in `view` role (namespace
    viewers) reads ConfigMaps but not Secrets."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(execution),
        "type": "Opaque",
        "immutable": True,
        "stringData": {"bindings.json": bindings_json(execution, plan, access)},
    }


def bindings_json(execution: ExecutionRef, plan: Plan, access: BrokerAccess) -> str:
    """How the program reaches the broker: its address, the Execution's token and name, its bindings' types."""
    body: contract.BindingsFileDict = {
        "url": access.broker.url,
        "token": access.token,
        "execution": f"{execution.namespace}/{execution.name}",
        "bindings": dict(plan.bindings),
    }
    return json.dumps(body)


def networkpolicy(
    execution: ExecutionRef, pinned: Sequence[PinnedHost] = (), broker: Broker | None = None
) -> dict[str, Any]:
    """No ingress at all; egress only to the pinned addresses and their TCP ports (none: no egress,
    no DNS), and with `broker` to the broker's pods on their port. Selected by the execution's uid label,
    which only the operator sets."""
    egress = [_egress_rule(host) for host in pinned]
    if broker is not None:
        egress.append(_broker_rule(broker))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(execution),
        "spec": {
            "podSelector": {"matchLabels": {EXECUTION_UID_LABEL: execution.uid}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def pod(
    execution: ExecutionRef,
    plan: Plan,
    config: OperatorConfig,
    pinned: Sequence[PinnedHost] = (),
    *,
    isolation_probe: str,
) -> dict[str, Any]:
    """The single-use sandbox pod; meets the Pod Security Standard "restricted". `isolation_probe`
    (HOST:PORT) is an address the NetworkPolicy denies: the runner starts the code only once it is
    unreachable."""
    args = runner_args(plan, config, isolation_probe=isolation_probe)
    spec = _sandbox_spec(
        plan.runtime,
        plan.cpu_millis,
        plan.memory_bytes,
        config,
        args,
        pinned,
        code=_code_volume(child_name(execution), with_bindings=bool(plan.bindings)),
    )
    spec["activeDeadlineSeconds"] = (
        plan.timeout_seconds + contract.ISOLATION_WAIT_SECONDS + config.active_deadline_grace_seconds
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(execution),
        "spec": spec,
    }


def warm_pod(
    pool: PoolRef,
    runtime: RuntimeSpec,
    cpu_millis: int,
    memory_bytes: int,
    config: OperatorConfig,
    isolation_probe: str,
) -> dict[str, Any]:
    """A pool's sandbox pod: the cold pod's contract, but started before its Execution exists. The runner
    pre-starts the harness and waits for one request on the container's stdin (written through pods/attach
    by the claim); no /code volume, and no activeDeadlineSeconds (the claim sets it: it may be set once,
    then only lowered). Ready only once the runner wrote WARM_READY_FILE (the isolation probe saw the
    deny-all NetworkPolicy in force): only a Ready pod may be offered."""
    template_hash = warm_template_hash(runtime, cpu_millis, memory_bytes, config, isolation_probe)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{pool.name[:MAX_GENERATE_NAME]}-",
            "namespace": pool.namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                NAME_LABEL: SANDBOX_NAME,
                POOL_LABEL: _label_value(pool.name),
                TEMPLATE_HASH_LABEL: template_hash,
            },
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "WarmPool",
                    "name": pool.name,
                    "uid": pool.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": _warm_pod_spec(runtime, cpu_millis, memory_bytes, config, isolation_probe),
    }


def warm_template_hash(
    runtime: RuntimeSpec, cpu_millis: int, memory_bytes: int, config: OperatorConfig, isolation_probe: str
) -> str:
    """A short, stable hash of everything in a warm pod's spec (image, command, args, resources, runtime
    class, security settings): a pool pod fits an Execution whose plan hashes alike, and a pool rolls the
    idle pods whose hash is not its current one."""
    spec = _warm_pod_spec(runtime, cpu_millis, memory_bytes, config, isolation_probe)
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:TEMPLATE_HASH_LENGTH]


def pool_selector(pool_name: str) -> str:
    """The label selector of every pod of a pool (idle or claimed)."""
    return f"{POOL_LABEL}={_label_value(pool_name)}"


def warm_networkpolicy(namespace: str) -> dict[str, Any]:
    """The namespace's one deny-all NetworkPolicy of pool pods (no ingress, no egress, so no DNS either),
    selecting every pod with POOL_LABEL. Owned by no pool: a claimed pod outlives its pool and stays fenced."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": WARM_NETWORKPOLICY,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY, NAME_LABEL: SANDBOX_NAME},
        },
        "spec": {
            "podSelector": {"matchExpressions": [{"key": POOL_LABEL, "operator": "Exists"}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }


def _warm_pod_spec(
    runtime: RuntimeSpec, cpu_millis: int, memory_bytes: int, config: OperatorConfig, isolation_probe: str
) -> dict[str, Any]:
    spec = _sandbox_spec(
        runtime, cpu_millis, memory_bytes, config, warm_runner_args(runtime, config, isolation_probe=isolation_probe)
    )
    spec["containers"][0] |= {
        # The one request arrives on stdin; stdinOnce false: the stream is not closed for good when the
        # first attach ends (the runner itself reads one request only). No TTY: bytes pass unaltered.
        "stdin": True,
        "stdinOnce": False,
        "tty": False,
        "startupProbe": {
            "exec": {"command": ["test", "-e", contract.WARM_READY_FILE]},
            "periodSeconds": 1,
            # The isolation probe's wait and the harness's preload; then the kubelet kills it and the pool replaces it.
            "failureThreshold": contract.ISOLATION_WAIT_SECONDS + WARM_START_SECONDS,
        },
    }
    return spec


def _sandbox_spec(
    runtime: RuntimeSpec,
    cpu_millis: int,
    memory_bytes: int,
    config: OperatorConfig,
    args: list[str],
    pinned: Sequence[PinnedHost] = (),
    *,
    code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pod spec every sandbox shares, cold or warm: the one place of its security settings. With `code` (the
    volume of _code_volume), its files are mounted read-only at /code."""
    quantities = {
        "cpu": format_cpu(cpu_millis),
        "memory": format_memory(memory_bytes),
        "ephemeral-storage": config.ephemeral_storage,
    }
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": TMP_DIR}]
    volumes: list[dict[str, Any]] = [
        # In memory: a full /tmp then fails writes with ENOSPC at sizeLimit (and counts toward the memory
        # limit), where a disk-backed emptyDir would let the code write on until the kubelet evicts it.
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": config.tmp_size}},
    ]
    if code is not None:
        mounts.insert(0, {"name": code["name"], "mountPath": CODE_DIR, "readOnly": True})
        volumes.insert(0, code)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "shareProcessNamespace": False,
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": [UNUSABLE_NAMESERVER]},
        "hostAliases": host_aliases(pinned),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NOBODY,
            "runAsGroup": NOBODY,
            "fsGroup": NOBODY,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": SANDBOX_CONTAINER,
                "image": runtime.image,
                "imagePullPolicy": runtime.image_pull_policy or config.image_pull_policy,
                "command": [contract.RUNNER_PATH],
                "args": args,
                "workingDir": TMP_DIR,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "privileged": False,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "resources": {"requests": dict(quantities), "limits": dict(quantities)},
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if config.runtime_class:
        spec["runtimeClassName"] = config.runtime_class
    return spec


def _code_volume(name: str, *, with_bindings: bool) -> dict[str, Any]:
    """The /code volume: the ConfigMap `name`; with bindings, one projected volume of it and the Secret `name`
    (bindings.json), so the runner finds every file in one folder and the pod has no more volumes."""
    if not with_bindings:
        return {"name": "code", "configMap": {"name": name, "defaultMode": 0o444}}
    return {
        "name": "code",
        "projected": {"defaultMode": 0o444, "sources": [{"configMap": {"name": name}}, {"secret": {"name": name}}]},
    }


def host_aliases(pinned: Sequence[PinnedHost]) -> list[dict[str, Any]]:
    """/etc/hosts entries of the pinned names: one per address, in the order pinned."""
    names: dict[str, list[str]] = {}
    for host in pinned:
        for address in host.addresses:
            hostnames = names.setdefault(address, [])
            if host.hostname not in hostnames:
                hostnames.append(host.hostname)
    return [{"ip": address, "hostnames": hostnames} for address, hostnames in names.items()]


def runner_args(plan: Plan, config: OperatorConfig, *, isolation_probe: str) -> list[str]:
    """Arguments of /opt/codeexec/runner, per the contract in sandbox_images/README.md."""
    return [
        contract.TIMEOUT_SECONDS_FLAG,
        str(plan.timeout_seconds),
        *_output_and_isolation_args(config, isolation_probe),
        contract.STDIN_FLAG,
        f"{CODE_DIR}/stdin",
        contract.INPUT_FLAG,
        f"{CODE_DIR}/input.json",
        contract.ENV_FILE_FLAG,
        f"{CODE_DIR}/env.json",
        *([contract.BINDINGS_FILE_FLAG, f"{CODE_DIR}/bindings.json"] if plan.bindings else []),
        "--",
        *plan.runtime.command,
        f"{CODE_DIR}/{plan.runtime.file_name}",
        *plan.spec.args,
    ]


def warm_runner_args(runtime: RuntimeSpec, config: OperatorConfig, *, isolation_probe: str) -> list[str]:
    """Arguments of the runner in warm mode: the request (code, input, timeout, ...) comes on stdin."""
    return [contract.WARM_FLAG, *_output_and_isolation_args(config, isolation_probe), "--", *runtime.command]


def _output_and_isolation_args(config: OperatorConfig, isolation_probe: str) -> list[str]:
    return [
        contract.MAX_OUTPUT_BYTES_FLAG,
        str(config.max_output_bytes),
        contract.ISOLATION_PROBE_FLAG,
        isolation_probe,
        contract.ISOLATION_WAIT_SECONDS_FLAG,
        str(contract.ISOLATION_WAIT_SECONDS),
    ]


def _metadata(execution: ExecutionRef) -> dict[str, Any]:
    return {
        "name": child_name(execution),
        "namespace": execution.namespace,
        "labels": labels(execution),
    }


def _label_value(name: str) -> str:
    # Object names may be 253 chars long; label values only 63.
    if len(name) <= MAX_LABEL_VALUE:
        return name
    return "sha256-" + hashlib.sha256(name.encode()).hexdigest()[:40]


def _broker_rule(broker: Broker) -> dict[str, Any]:
    # The broker's pods by their namespace and the Service's selector, on their own port: the policy applies
    # after the Service's address is translated to a pod's. Nothing else of the broker (its metrics port).
    return {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": broker.namespace}},
                "podSelector": {"matchLabels": dict(broker.selector)},
            }
        ],
        "ports": [{"protocol": "TCP", "port": broker.target_port}],
    }


def _egress_rule(host: PinnedHost) -> dict[str, Any]:
    # /32 or /128: ip_network of a bare address is the network of that one address.
    ports = (host.port,) if host.port is not None else DEFAULT_DOMAIN_PORTS
    return {
        "to": [{"ipBlock": {"cidr": str(ipaddress.ip_network(address))}} for address in host.addresses],
        "ports": [{"protocol": "TCP", "port": port} for port in ports],
    }
