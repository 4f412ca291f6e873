"""Pydantic models of the Execution, Runtime, WarmPool and SandboxBinding resources: the single source of the CRD
schemas."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel

from codeexec.vocabulary import Phase, Sandbox

GROUP = "codeexec.io"
VERSION = "v1alpha1"

# Byte limits keep an Execution (spec, status and kubectl's last-applied copy of
# the spec) under etcd's 1.5 MiB object limit and its ConfigMap under 1 MiB.
MAX_CODE_BYTES = 100 * 1024
MAX_STDIN_BYTES = 256 * 1024
MAX_INPUT_BYTES = 128 * 1024
MAX_ENV_BYTES = 32 * 1024
# Far below the API server's 10,000 and the runner's Python json (about 1,000); no real input comes near.
MAX_INPUT_DEPTH = 100
MAX_ARGS = 64
MAX_ENV_VARS = 64
MAX_ALLOWED_DOMAINS = 32
MAX_TIMEOUT_SECONDS = 3600
# A day: an upper bound for the schema; the operator's max_queue_timeout_seconds is the real limit.
MAX_QUEUE_TIMEOUT_SECONDS = 86400
# An upper bound for the schema; the operator's max_warm_pool_replicas is the real limit.
MAX_WARM_POOL_REPLICAS = 1000

RESERVED_ENV_PREFIX = "CODEEXEC_"
# Go RE2 (the API server) and Rust regex (pydantic) both accept these: no lookaround.
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Lower-case DNS name with at least one dot (the last label not numeric, so no IP address),
# optionally followed by :port (1-65535, no leading zero).
PORT_PATTERN = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
DOMAIN_PATTERN = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]([-a-z0-9]{0,61}[a-z0-9])?" + f"(:{PORT_PATTERN})?$"
# Ports an allowed domain without ":port" may be reached on (HTTPS and HTTP).
DEFAULT_DOMAIN_PORTS = (443, 80)
MAX_HOST_NAME_LENGTH = 253
CPU_PATTERN = r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$"
MEMORY_PATTERN = r"^[0-9]+(Ki|Mi|Gi|k|K|M|G)?$"
FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# The runner contract puts these next to the code file: in /code (cold), in its warm directory (warm: ready).
RESERVED_FILE_NAMES = ("input.json", "stdin", "env.json", "bindings.json", "ready")
# An object name (DNS-1123 subdomain), as a SandboxBinding's; a DNS label, as a SQLite database's name.
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MAX_OBJECT_NAME_LENGTH = 253
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
MAX_BINDINGS = 8
# status.usedBy of a SandboxBinding names at most this many Executions (inUse counts them all).
MAX_USED_BY = 20
MAX_BINDING_ERROR_LENGTH = 1024
MAX_AI_MODELS = 32
MAX_AI_REQUEST_TIMEOUT_MS = 300_000
# An OpenAI-compatible API's base URL: http or https, a host (no user:password@), a path; no query or fragment.
AI_ENDPOINT_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"

CpuQuantity = Annotated[str, StringConstraints(pattern=CPU_PATTERN, max_length=32)]
MemoryQuantity = Annotated[str, StringConstraints(pattern=MEMORY_PATTERN, max_length=32)]
LanguageName = Annotated[str, StringConstraints(min_length=1, max_length=63)]
ObjectName = Annotated[str, StringConstraints(max_length=MAX_OBJECT_NAME_LENGTH, pattern=OBJECT_NAME_PATTERN)]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
BindingType = Literal["db", "ai"]
# A model's name as the endpoint knows it ("qwen2.5:0.5b", "@cf/meta/llama-3-8b-instruct"): no blanks.
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^\S+$")]

ANY_JSON: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


class Model(BaseModel):
    """Base: camelCase field names in the API, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        frozen=True,
    )


class Resources(Model):
    """CPU and memory for the sandbox container; requests equal limits."""

    cpu: CpuQuantity | None = Field(
        default=None,
        description='CPU as a Kubernetes quantity, e.g. "500m" or "1".',
    )
    memory: MemoryQuantity | None = Field(
        default=None,
        description='Memory as a Kubernetes quantity, e.g. "256Mi" or "1Gi".',
    )


class EnvVar(Model):
    """One environment variable for the code."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=ENV_NAME_PATTERN,
        description=f"Variable name: a C identifier not starting with {RESERVED_ENV_PREFIX}.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!self.startsWith('{RESERVED_ENV_PREFIX}')",
                    "message": f"names starting with {RESERVED_ENV_PREFIX} are reserved",
                }
            ]
        },
    )
    value: str = Field(default="", max_length=4096, description="Literal value.")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(f"names starting with {RESERVED_ENV_PREFIX} are reserved")
        return name


class Network(Model):
    """Network access of the sandbox."""

    allowed_domains: list[Annotated[str, StringConstraints(max_length=259, pattern=DOMAIN_PATTERN)]] = Field(
        default_factory=list,
        max_length=MAX_ALLOWED_DOMAINS,
        description=(
            'Exact host names the code may connect to over TCP, each optionally with ":port" '
            f"(ports {' and '.join(map(str, DEFAULT_DOMAIN_PORTS))} otherwise); no wildcards, no IP addresses. "
            "Empty (the default): no network egress at all. DNS stays closed: the operator resolves "
            "these names when it accepts the Execution, pins the addresses in the pod's /etc/hosts and "
            "allows exactly those addresses; a name that resolves to a loopback, link-local, private or "
            "cluster address is rejected."
        ),
    )

    @field_validator("allowed_domains")
    @classmethod
    def _host_names_fit_dns(cls, domains: list[str]) -> list[str]:
        for domain in domains:
            host = domain.partition(":")[0]
            if len(host) > MAX_HOST_NAME_LENGTH:
                raise ValueError(f"{host[:40]}...: a host name has at most {MAX_HOST_NAME_LENGTH} characters")
        return domains


class ExecutionSpec(Model):
    """What to run. Immutable after creation."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "spec is immutable; create a new Execution instead",
                }
            ]
        }
    )

    language: LanguageName = Field(
        description="Name of an installed Runtime or one of its aliases (kubectl get runtimes).",
    )
    # maxLength (characters) lets the API server refuse the worst at admission; the byte
    # limits are checked by the operator (validation.py) with a precise reason.
    code: str = Field(
        description=f"Source code, at most {MAX_CODE_BYTES} bytes in UTF-8.",
        json_schema_extra={"maxLength": MAX_CODE_BYTES},
    )
    stdin: str | None = Field(
        default=None,
        description=f"Standard input of the program, at most {MAX_STDIN_BYTES} bytes in UTF-8.",
        json_schema_extra={"maxLength": MAX_STDIN_BYTES},
    )
    input: Any = Field(
        default=None,
        description=(
            "Any JSON value handed to the code (Python and JavaScript: the global `input`), "
            f"at most {MAX_INPUT_BYTES} bytes serialized and nested at most {MAX_INPUT_DEPTH} levels deep."
        ),
        json_schema_extra=ANY_JSON,
    )
    args: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list,
        max_length=MAX_ARGS,
        description="Command-line arguments for the program (sys.argv[1:], process.argv).",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=MAX_ENV_VARS,
        description="Environment variables with literal values; names must be unique.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description=(
            "Wall-clock limit for the program in seconds. Defaults to the Runtime's "
            "defaultTimeoutSeconds (30 unless the Runtime says otherwise); bounded by the "
            "Runtime's and the operator's maximum."
        ),
    )
    resources: Resources | None = Field(
        default=None,
        description=(
            "CPU and memory for the sandbox. Defaults to the Runtime's defaultResources, "
            "then the operator's defaults; bounded by the Runtime's and the operator's maxima."
        ),
    )
    network: Network | None = Field(
        default=None,
        description="Network access. Absent: no network egress at all.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the Execution this many seconds after it finished. Absent: keep it.",
    )
    queue_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_QUEUE_TIMEOUT_SECONDS,
        description=(
            "How long the Execution may wait in the queue for capacity, counted from its creation; still "
            "waiting then: Failed with reason QueueTimeout. Absent: the operator's default (1800 unless "
            "configured); above the operator's maximum: Rejected (QueueTimeoutTooLong)."
        ),
    )
    bindings: list[ObjectName] = Field(
        default_factory=list,
        max_length=MAX_BINDINGS,
        description=(
            "Names of SandboxBindings of this namespace (kubectl get sandboxbindings) whose capabilities the code "
            "may use, through the broker: no credential ever reaches the sandbox. A name with no SandboxBinding: "
            "Rejected (BindingNotFound); no broker installed: Rejected (BindingsUnavailable). An Execution with "
            "bindings always gets a new sandbox (never a warm pool's)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @field_validator("input")
    @classmethod
    def _input_not_too_deep(cls, value: Any) -> Any:
        depth = json_depth(value)
        if depth > MAX_INPUT_DEPTH:
            raise ValueError(f"nested {depth} levels deep; the maximum is {MAX_INPUT_DEPTH}")
        return value

    @field_validator("env")
    @classmethod
    def _unique_env_names(cls, env: list[EnvVar]) -> list[EnvVar]:
        _refuse_duplicates([var.name for var in env])
        return env

    @field_validator("bindings")
    @classmethod
    def _unique_bindings(cls, bindings: list[str]) -> list[str]:
        _refuse_duplicates(bindings)
        return bindings

    # The sandbox's input.json and env.json: one definition, so the size limits measure exactly what ships.
    def input_json(self) -> str:
        return json.dumps(self.input)

    def env_json(self) -> str:
        return json.dumps({var.name: var.value for var in self.env})


def _refuse_duplicates(names: list[str]) -> None:
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate names: {', '.join(duplicates)}")


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value (a scalar: 0), level by level without recursion: the value may be
    nested deeper than Python's recursion limit allows to recurse."""
    depth, level = 0, [value]
    while any(isinstance(item, dict | list) for item in level):
        depth += 1
        level = [child for item in level for child in _json_children(item)]
    return depth


def _json_children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    return value if isinstance(value, list) else []


class LogEntry(Model):
    """One structured console entry written by the code."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    # Plain strings: an unexpected level or time format from a runner must not
    # make the whole report, or the status patch, invalid.
    level: str = Field(description="Console method used: log, info, warn, error or debug.")
    time: str = Field(description="When the entry was written (RFC 3339, UTC).")
    message: str = Field(description="The arguments joined by spaces.")


class Condition(Model):
    """A Kubernetes-style condition."""

    type: str = Field(description="Accepted or Finished (an Execution); Ready (a WarmPool, a SandboxBinding).")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="Stable CamelCase reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: Timestamp = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation this condition was computed from."
    )


class Usage(Model):
    """What the program used, as the runner accounted it from the rusage of every process it reaped."""

    cpu_ms: int = Field(
        ge=0, description="User plus system CPU time of the program and all its child processes, in ms."
    )
    peak_memory_bytes: int = Field(
        ge=0,
        description=(
            "Largest resident set size (ru_maxrss) reached by any single process of the program, in bytes, as "
            "the sandbox kernel (gVisor) accounts it. Not the container's cgroup peak: processes running at "
            "once are not added up, and files in the in-memory /tmp, which count toward the memory limit, are "
            "not included."
        ),
    )


class BindingUsage(Model):
    """What the code did with one binding, counted by the broker."""

    name: ObjectName = Field(description="The SandboxBinding's name, as in spec.bindings.")
    type: BindingType = Field(description="The binding's type: db or ai.")
    calls: int = Field(default=0, ge=0, description="Calls the broker answered for this binding, refused ones too.")
    errors: int = Field(
        default=0,
        ge=0,
        description=(
            "Calls that failed: SQL errors, timeouts, limits or budgets hit, backend or model endpoint unavailable."
        ),
    )
    refused: int = Field(
        default=0,
        ge=0,
        description="Calls refused: not granted, a write to a readOnly binding, a model the binding does not allow.",
    )
    # No defaults: the API server would add them to entries of the other type.
    rows_read: int | None = Field(default=None, ge=0, description="db: rows returned to the code over all calls.")
    rows_written: int | None = Field(
        default=None, ge=0, description="db: rows inserted, updated or deleted over all calls."
    )
    tokens: int | None = Field(
        default=None,
        ge=0,
        description="ai: tokens the model endpoint counted over all calls (prompt and completion, usage.total_tokens).",
    )
    last_error: str | None = Field(
        default=None,
        max_length=MAX_BINDING_ERROR_LENGTH,
        description="The last error's code and message, as the code got it.",
    )


class ExecutionStatus(Model):
    """Outcome of an Execution, written by the operator."""

    phase: Phase | None = Field(
        default=None,
        description="Pending, Running, Succeeded, Failed, TimedOut or Rejected (invalid spec).",
    )
    reason: str | None = Field(
        default=None,
        description="Stable CamelCase reason for the phase, e.g. Completed, NonZeroExit, OOMKilled.",
    )
    message: str | None = Field(default=None, description="Human-readable detail.")
    exit_code: int | None = Field(default=None, description="Exit code of the program.")
    stdout: str | None = Field(default=None, description="Standard output (UTF-8, capped).")
    stdout_bytes: int | None = Field(default=None, description="Total bytes written to stdout.")
    stdout_truncated: bool | None = Field(default=None, description="stdout was cut at the cap.")
    stderr: str | None = Field(default=None, description="Standard error (UTF-8, capped).")
    stderr_bytes: int | None = Field(default=None, description="Total bytes written to stderr.")
    stderr_truncated: bool | None = Field(default=None, description="stderr was cut at the cap.")
    result: Any = Field(
        default=None,
        description="JSON value returned by the code, if any.",
        json_schema_extra=ANY_JSON,
    )
    logs: list[LogEntry] | None = Field(
        default=None, description="Structured console entries (console.log/info/warn/error)."
    )
    logs_truncated: bool | None = Field(default=None, description="Console entries were dropped.")
    started_at: Timestamp | None = Field(default=None, description="When the program started.")
    finished_at: Timestamp | None = Field(default=None, description="When the Execution reached its final phase.")
    duration_ms: int | None = Field(default=None, description="Run time of the program in ms.")
    usage: Usage | None = Field(
        default=None,
        description=(
            "CPU time and peak memory of the run, from the sandbox runner's report; absent when no program ran "
            "or the report is missing."
        ),
    )
    pod_name: str | None = Field(default=None, description="Name of the sandbox pod.")
    sandbox: Sandbox | None = Field(
        default=None,
        description=(
            "Which path gave the Execution its pod: warm (a pre-started pod of a WarmPool, claimed for this "
            "Execution alone) or cold (a pod created for it)."
        ),
    )
    queue_position: int | None = Field(
        default=None,
        description=(
            "Place in the cluster-wide queue (1: starts next) while the Execution waits for capacity "
            "(reason Queued); refreshed every little while, removed once it runs."
        ),
    )
    resources: Resources | None = Field(
        default=None, description="CPU and memory the sandbox gets (requests equal limits), as accepted."
    )
    resolved_addresses: list[str] | None = Field(
        default=None, description="Addresses the allowed domains resolved to, as pinned."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Accepted and Finished conditions.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the status was computed from."
    )
    bindings: list[BindingUsage] | None = Field(
        default=None,
        description=(
            "Use of each binding named in spec.bindings, written by the broker (never by the operator) while the "
            "code runs and once more when its calls stop."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )


class RuntimeSpec(Model):
    """An installed language: the image and how the runner starts the code."""

    image: str = Field(min_length=1, max_length=512, description="Sandbox image reference.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None,
        description="Pull policy for the image. Absent: the operator's default.",
    )
    command: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)]] = Field(
        min_length=1,
        max_length=16,
        description=(
            "The program the runner starts, e.g. [python3, /opt/codeexec/harness.py]; "
            "the runner appends the code path and the Execution's args."
        ),
    )
    file_name: str = Field(
        pattern=FILE_NAME_PATTERN,
        description="File name of the code under /code, e.g. main.py.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!(self in {list(RESERVED_FILE_NAMES)})",
                    "message": f"fileName must not be one of {', '.join(RESERVED_FILE_NAMES)}",
                }
            ]
        },
    )
    version: str = Field(default="", max_length=64, description="Language version, e.g. 3.11.")
    aliases: list[LanguageName] = Field(
        default_factory=list,
        max_length=16,
        description="Other names an Execution's language may use, e.g. [py, python3].",
    )
    description: str = Field(default="", max_length=1024, description="Free text for users.")
    default_timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="Timeout for Executions that set none.",
    )
    max_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="Largest timeout an Execution may ask for. Absent: the operator's maximum.",
    )
    default_resources: Resources | None = Field(
        default=None,
        description="Resources for Executions that set none. Absent: the operator's defaults.",
    )
    max_resources: Resources | None = Field(
        default=None,
        description="Largest resources an Execution may ask for. Absent: the operator's maxima.",
    )

    @field_validator("file_name")
    @classmethod
    def _not_reserved(cls, file_name: str) -> str:
        if file_name in RESERVED_FILE_NAMES:
            raise ValueError(f"fileName must not be one of {', '.join(RESERVED_FILE_NAMES)}")
        return file_name


class WarmPoolSpec(Model):
    """How many started sandboxes of one Runtime and size a namespace keeps ready to be claimed."""

    runtime: LanguageName = Field(
        description="Name of an installed Runtime or one of its aliases (kubectl get runtimes).",
    )
    replicas: int = Field(
        ge=0,
        le=MAX_WARM_POOL_REPLICAS,
        description=(
            "Idle sandboxes to keep started and ready; each serves one Execution, then the pool starts another. "
            "Above the operator's maxWarmPoolReplicas (10 unless configured) the pool keeps that many "
            "(condition Ready False, reason ReplicasTooLarge). Pool pods count against the namespace's quota."
        ),
    )
    resources: Resources | None = Field(
        default=None,
        description=(
            "CPU and memory of each sandbox. Defaults as an Execution's do (the Runtime's defaultResources, "
            "then the operator's defaults), so an Execution without resources fits a pool without them; "
            "bounded by the same maxima. An Execution is served by a pool only when its resources are equal."
        ),
    )


class WarmPoolStatus(Model):
    """What the pool holds, written by the operator."""

    replicas: int | None = Field(
        default=None, description="Idle sandboxes of the current template (Runtime image and size), ready or not."
    )
    ready_replicas: int | None = Field(default=None, description="Idle sandboxes ready to be claimed.")
    conditions: list[Condition] | None = Field(
        default=None,
        description=(
            "The Ready condition: True (reason Ready) once readyReplicas equals spec.replicas; False with "
            "Filling, ReplicasTooLarge, CreateRefused, UnknownRuntime, ResourcesTooLarge, InvalidSpec, "
            "RuntimeClassMissing, or QueueBacklog (Executions wait in the queue for room on the nodes: the "
            "pool keeps no idle pods until they have it)."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the status was computed from."
    )


class SecretKeyRef(Model):
    """One key of a Secret in the SandboxBinding's namespace."""

    name: ObjectName = Field(description="The Secret's name.")
    key: str = Field(
        min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="The key in the Secret's data."
    )


_POSTGRES = "has(self.engine) && self.engine == 'postgres'"


class DbBinding(Model):
    """A SQL database the code may use through the broker, with what it may do there."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"({_POSTGRES}) == has(self.dsnSecretRef)",
                    "message": "dsnSecretRef is required with engine postgres and not allowed with engine sqlite",
                },
                {
                    "rule": f"!({_POSTGRES} && has(self.database))",
                    "message": "database is for engine sqlite only (a postgres database is named by its DSN)",
                },
            ]
        }
    )

    engine: Literal["sqlite", "postgres"] = Field(
        default="sqlite",
        description=(
            "sqlite (the default): a database file the broker keeps on its volume, made on first use; postgres: "
            "the PostgreSQL database the DSN in dsnSecretRef names."
        ),
    )
    database: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description=(
            "sqlite only: the database's name within this namespace (a DNS label). Absent: the SandboxBinding's "
            "name. Two bindings naming the same database share it (e.g. one readOnly, one not)."
        ),
    )
    dsn_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "postgres only, required then: the Secret key holding the DSN (postgresql://user:password@host/db). "
            "Only the broker reads it; the code never sees it."
        ),
    )
    read_only: bool = Field(
        default=False,
        description=(
            "Refuse every write (INSERT, UPDATE, DDL, ATTACH, ...). PostgreSQL: a READ ONLY transaction, which some "
            "functions pass (large objects, pg_notify): a hard guarantee needs a DSN whose role has only SELECT."
        ),
    )
    statement_timeout_ms: int = Field(
        default=5000,
        ge=1,
        le=60000,
        description=(
            "Longest one call may run, in ms: its statements together (an exec script's too), waits for a lock or "
            "a connection included; then it is cancelled (StatementTimeout)."
        ),
    )
    max_rows_per_call: int = Field(
        default=1000, ge=1, le=100000, description="Most rows one call may return; more: the call fails (413)."
    )
    max_bytes_per_call: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Most bytes of one call's JSON result; more: the call fails (413).",
    )
    max_rows_per_execution: int = Field(
        default=100000,
        ge=1,
        le=100_000_000,
        description="Most rows returned to one Execution over all its calls; beyond: its calls fail (413).",
    )

    @model_validator(mode="after")
    def _engine_fields(self) -> DbBinding:
        postgres = self.engine == "postgres"
        if postgres != (self.dsn_secret_ref is not None):
            raise ValueError("dsnSecretRef is required with engine postgres and not allowed with engine sqlite")
        if postgres and self.database is not None:
            raise ValueError("database is for engine sqlite only (a postgres database is named by its DSN)")
        return self


class AiBinding(Model):
    """An OpenAI-compatible endpoint the code may use through the broker: the models it may name, its budgets."""

    endpoint: str = Field(
        max_length=2048,
        pattern=AI_ENDPOINT_PATTERN,
        description=(
            "The base URL of an OpenAI-compatible API, http or https, e.g. http://llm.models.svc:8080/v1: the broker "
            "calls <endpoint>/chat/completions and <endpoint>/embeddings. No user:password@ (use apiKeySecretRef)."
        ),
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "The Secret key holding the API key, sent as `Authorization: Bearer <key>`; absent: no Authorization "
            "(a server without auth). Only the broker reads it; the code never sees it."
        ),
    )
    models: list[ModelName] = Field(
        min_length=1,
        max_length=MAX_AI_MODELS,
        description=(
            "The model names the code may ask for, as the endpoint knows them; any other: the call is refused "
            "(403 ModelNotAllowed)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    max_requests_per_execution: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Most requests one Execution may send to the endpoint; beyond: its calls fail (429).",
    )
    max_tokens_per_execution: int = Field(
        default=100_000,
        ge=1,
        le=1_000_000_000,
        description=(
            "Most tokens (prompt and completion, as the endpoint counts them) one Execution may use; a call's "
            "max_tokens is capped to what is left, and once none is left its calls fail (429)."
        ),
    )
    request_timeout_ms: int = Field(
        default=60_000,
        ge=1,
        le=MAX_AI_REQUEST_TIMEOUT_MS,
        description="Longest the endpoint may take to answer one request, in ms; then the call fails (504).",
    )

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[str]) -> list[str]:
        _refuse_duplicates(models)
        return models


class SandboxBindingSpec(Model):
    """A capability (exactly one of db, ai) granted to every Execution of this namespace that names the binding."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.db) != has(self.ai)", "message": "exactly one of db, ai is required"}
            ]
        }
    )

    db: DbBinding | None = Field(default=None, description="A SQL database: SQLite kept by the broker or PostgreSQL.")
    ai: AiBinding | None = Field(
        default=None, description="Model inference at an OpenAI-compatible endpoint (chat completions, embeddings)."
    )

    @model_validator(mode="after")
    def _one_type(self) -> SandboxBindingSpec:
        if (self.db is None) == (self.ai is None):
            raise ValueError("exactly one of db, ai is required")
        return self

    @property
    def type(self) -> BindingType:
        return "db" if self.db is not None else "ai"

    @property
    def secret_ref(self) -> tuple[SecretKeyRef, str] | None:
        """The Secret key the binding needs to serve, and the field naming it; None when it needs none."""
        if self.db is not None:
            return (self.db.dsn_secret_ref, "spec.db.dsnSecretRef") if self.db.dsn_secret_ref else None
        assert self.ai is not None
        return (self.ai.api_key_secret_ref, "spec.ai.apiKeySecretRef") if self.ai.api_key_secret_ref else None


class SandboxBindingStatus(Model):
    """Whether the binding can serve and who uses it now, written by the operator."""

    type: BindingType | None = Field(
        default=None, description="The binding's type, db or ai (for kubectl get); absent while its spec is invalid."
    )
    in_use: int | None = Field(default=None, ge=0, description="Running Executions that name this binding.")
    used_by: list[str] | None = Field(
        default=None,
        max_length=MAX_USED_BY,
        description=f"Names of those Executions, sorted (at most {MAX_USED_BY}; inUse counts them all).",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description=(
            "The Ready condition: True (reason Ready) when the spec is valid and, for postgres, its Secret key "
            "exists; False with InvalidSpec or SecretMissing. Checked when the binding changes and when an "
            "Execution naming it starts or ends (a Secret made later is seen then)."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the status was computed from."
    )
