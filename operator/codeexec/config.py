"""Operator settings, read from CODEEXEC_* environment variables (the only reader of the environment)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from codeexec.models import MAX_QUEUE_TIMEOUT_SECONDS, MAX_WARM_POOL_REPLICAS, CpuQuantity, MemoryQuantity

ENV_PREFIX = "CODEEXEC_"
# An IP network in CIDR notation (checked exactly by ipaddress below; the pattern is for the chart's schema).
Cidr = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$")]


class OperatorConfig(BaseModel):
    """Operator-wide settings. Each field is set by the variable CODEEXEC_<FIELD NAME IN CAPITALS>."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runtime_class: str = Field(
        default="gvisor",
        description=(
            "RuntimeClass of the sandbox pods. If it does not exist, Executions fail with "
            'RuntimeClassMissing (fail closed). The empty string "" runs pods without a '
            "runtime class: only for clusters without gVisor, never in production."
        ),
    )
    keep_pods: bool = Field(
        default=False,
        description=(
            "Keep sandbox pods, ConfigMaps, NetworkPolicies and binding Secrets after an Execution finishes "
            "(debugging)."
        ),
    )
    max_output_bytes: int = Field(
        default=65536,
        ge=1024,
        le=256 * 1024,
        description="Bytes of stdout and of stderr kept in the status (each); the rest is counted and truncated.",
    )
    start_deadline_seconds: int = Field(
        default=120,
        ge=10,
        description=(
            "A pod not running this long after its creation (or its scheduling, if later) fails the Execution "
            "(ImageError, Unschedulable or StartTimeout); a pod waiting for CPU or memory waits in the queue instead."
        ),
    )
    max_timeout_seconds: int = Field(
        default=600,
        ge=1,
        le=3600,
        description="Largest timeoutSeconds any Execution may use, whatever its Runtime allows.",
    )
    max_cpu: CpuQuantity = Field(default="2", description="Largest CPU any Execution may use.")
    max_memory: MemoryQuantity = Field(default="1Gi", description="Largest memory any Execution may use.")
    default_cpu: CpuQuantity = Field(default="500m", description="CPU of Executions whose spec and Runtime set none.")
    default_memory: MemoryQuantity = Field(
        default="256Mi", description="Memory of Executions whose spec and Runtime set none."
    )
    tmp_size: MemoryQuantity = Field(
        default="64Mi",
        description=(
            "Size of the sandbox's writable /tmp, an in-memory emptyDir: writes beyond it fail with ENOSPC, "
            "and what /tmp holds counts toward the Execution's memory limit."
        ),
    )
    ephemeral_storage: MemoryQuantity = Field(
        default="128Mi",
        description="Ephemeral-storage limit of the sandbox container (its writable layer and logs).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Pull policy of sandbox images for Runtimes that set none."
    )
    max_running: int = Field(
        default=0,
        ge=0,
        description=(
            "Most sandboxes running at once in the whole cluster. 0: as many as the nodes' free allocatable "
            "CPU and memory hold (always a bound: a sandbox starts only when its requests fit)."
        ),
    )
    max_running_per_namespace: int = Field(
        default=0,
        ge=0,
        description="Most sandboxes running at once in one namespace. 0: no limit beyond the cluster's.",
    )
    # 30 minutes: a burst of 300 trivial Executions after `make demo` takes 9-10 minutes on a 2-core node, and a
    # queue exists so that such a burst waits rather than fails.
    default_queue_timeout_seconds: int = Field(
        default=1800,
        ge=1,
        le=MAX_QUEUE_TIMEOUT_SECONDS,
        description=(
            "How long an Execution without spec.queueTimeoutSeconds may wait in the queue (from its creation) "
            "before it fails with QueueTimeout."
        ),
    )
    max_queue_timeout_seconds: int = Field(
        default=3600,
        ge=1,
        le=MAX_QUEUE_TIMEOUT_SECONDS,
        description="Largest spec.queueTimeoutSeconds an Execution may ask for (above: Rejected, QueueTimeoutTooLong).",
    )
    max_warm_pool_replicas: int = Field(
        default=10,
        ge=0,
        le=MAX_WARM_POOL_REPLICAS,
        description=(
            "Most idle sandboxes one WarmPool keeps (its spec.replicas above this: it keeps this many, "
            "condition ReplicasTooLarge)."
        ),
    )
    active_deadline_grace_seconds: int = Field(
        default=30,
        ge=1,
        description=(
            "activeDeadlineSeconds of a pod is the Execution's timeout plus this: "
            "a backstop behind the runner's own timeout."
        ),
    )
    allowed_private_cidrs: tuple[Cidr, ...] = Field(
        default=(),
        description=(
            "CIDRs inside the private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, "
            "100.64.0.0/10, fc00::/7) that allowed domains may resolve to. Empty: a domain resolving to a "
            "private address is rejected. Never opens the cluster's ranges or node addresses."
        ),
    )
    cluster_cidrs: tuple[Cidr, ...] = Field(
        default=(),
        description=(
            "CIDRs of the cluster that sandboxes never reach, whatever a domain resolves to, "
            "beyond those the operator reads from the API itself (the service ranges of the ServiceCIDR "
            "objects, Kubernetes 1.33+; every node's addresses and pod CIDRs; the kubernetes Service and its "
            "endpoints). Set the pod range when your network plugin assigns pod addresses outside the nodes' "
            "pod CIDRs, and the service range before Kubernetes 1.33."
        ),
    )
    namespaces: tuple[str, ...] = Field(
        default=(),
        description="Namespaces to watch. Empty: all namespaces.",
    )
    log_level: Literal["debug", "info", "warning"] = Field(
        default="info", description="Lowest level of the operator's log messages."
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the Prometheus endpoint /metrics (all interfaces). 0: no metrics endpoint.",
    )
    webhook_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description=(
            "Port of the validating admission webhook (HTTPS, all interfaces). 0: no webhook, as for an "
            "operator run locally without a Service; the operator still rejects invalid Executions itself."
        ),
    )
    webhook_cert_dir: str = Field(
        default="/etc/codeexec/webhook",
        description="Directory with the webhook's serving certificate tls.crt and key tls.key.",
    )
    peering: str = Field(
        default="",
        description=(
            "Name of the ClusterKopfPeering object the operator's replicas share: the one with the highest "
            "priority handles Executions, the others stand by. Empty: standalone, no peering; then run exactly "
            "one operator for the watched namespaces."
        ),
    )
    peering_lifetime_seconds: int = Field(
        default=10,
        ge=10,
        le=300,
        description=(
            "How long a replica's peering record stays valid without a keep-alive (sent 5 to 10 seconds "
            "before it expires): after a replica dies without exiting, the standby takes over within this time."
        ),
    )

    broker_service: str = Field(
        default="",
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        description=(
            "The bindings broker's Service as namespace/name: a sandbox of an Execution with bindings may "
            "reach its pods (nothing else of the cluster), at its cluster IP. Empty: no broker; Executions that "
            "name bindings are Rejected (BindingsUnavailable)."
        ),
    )
    binding_token_key_file: str = Field(
        default="/var/run/codeexec/binding-token-key/key",
        description=(
            "File with the key (at least 32 bytes) the binding tokens are derived from, shared with the broker; "
            "read once, at the first Execution with bindings."
        ),
    )

    @field_validator("allowed_private_cidrs", "cluster_cidrs", "namespaces", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("allowed_private_cidrs", "cluster_cidrs")
    @classmethod
    def _valid_cidrs(cls, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        # strict: "10.0.0.1/8" (host bits set) is more likely a typo than a network.
        for cidr in cidrs:
            ipaddress.ip_network(cidr, strict=True)
        return cidrs

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """Settings from the environment; unset variables keep their defaults."""
        env = os.environ if environ is None else environ
        values = {name: env[variable_name(name)] for name in cls.model_fields if variable_name(name) in env}
        return cls.model_validate(values)


def variable_name(field_name: str) -> str:
    """Environment variable that sets a field, e.g. keep_pods → CODEEXEC_KEEP_PODS."""
    return ENV_PREFIX + field_name.upper()
