"""Builds the sandbox's ConfigMap, NetworkPolicy and Pod as plain dicts, without I/O."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from codeexec.config import OperatorConfig
from codeexec.egress import PinnedHost
from codeexec.models import DEFAULT_DOMAIN_PORTS
from codeexec.validation import Plan, format_cpu, format_memory
from codeexec.vocabulary import (
    EXECUTION_LABEL,
    EXECUTION_UID_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    SANDBOX_CONTAINER,
    SANDBOX_NAME,
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


@dataclass(frozen=True)
class ExecutionRef:
    """Identity of the Execution that owns the sandbox."""

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


def networkpolicy(execution: ExecutionRef, pinned: Sequence[PinnedHost] = ()) -> dict[str, Any]:
    """No ingress at all; egress only to the pinned addresses and their TCP ports (none: no egress,
    no DNS). Selected by the execution's uid label, which only the operator sets."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(execution),
        "spec": {
            "podSelector": {"matchLabels": {EXECUTION_UID_LABEL: execution.uid}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [_egress_rule(host) for host in pinned],
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
    quantities = {
        "cpu": format_cpu(plan.cpu_millis),
        "memory": format_memory(plan.memory_bytes),
        "ephemeral-storage": config.ephemeral_storage,
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": (
            plan.timeout_seconds + contract.ISOLATION_WAIT_SECONDS + config.active_deadline_grace_seconds
        ),
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
                "image": plan.runtime.image,
                "imagePullPolicy": plan.runtime.image_pull_policy or config.image_pull_policy,
                "command": [contract.RUNNER_PATH],
                "args": runner_args(plan, config, isolation_probe=isolation_probe),
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
                "volumeMounts": [
                    {"name": "code", "mountPath": CODE_DIR, "readOnly": True},
                    {"name": "tmp", "mountPath": TMP_DIR},
                ],
            }
        ],
        "volumes": [
            {
                "name": "code",
                "configMap": {"name": child_name(execution), "defaultMode": 0o444},
            },
            # In memory: a full /tmp then fails writes with ENOSPC at sizeLimit (and counts toward the memory
            # limit), where a disk-backed emptyDir would let the code write on until the kubelet evicts it.
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": config.tmp_size}},
        ],
    }
    if config.runtime_class:
        spec["runtimeClassName"] = config.runtime_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(execution),
        "spec": spec,
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
        contract.MAX_OUTPUT_BYTES_FLAG,
        str(config.max_output_bytes),
        contract.ISOLATION_PROBE_FLAG,
        isolation_probe,
        contract.ISOLATION_WAIT_SECONDS_FLAG,
        str(contract.ISOLATION_WAIT_SECONDS),
        contract.STDIN_FLAG,
        f"{CODE_DIR}/stdin",
        contract.INPUT_FLAG,
        f"{CODE_DIR}/input.json",
        contract.ENV_FILE_FLAG,
        f"{CODE_DIR}/env.json",
        "--",
        *plan.runtime.command,
        f"{CODE_DIR}/{plan.runtime.file_name}",
        *plan.spec.args,
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


def _egress_rule(host: PinnedHost) -> dict[str, Any]:
    # /32 or /128: ip_network of a bare address is the network of that one address.
    ports = (host.port,) if host.port is not None else DEFAULT_DOMAIN_PORTS
    return {
        "to": [{"ipBlock": {"cidr": str(ipaddress.ip_network(address))}} for address in host.addresses],
        "ports": [{"protocol": "TCP", "port": port} for port in ports],
    }
