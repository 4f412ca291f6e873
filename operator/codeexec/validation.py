"""Decides, without I/O, whether an Execution can run and with which runtime, timeout, resources and bindings."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pydantic import ValidationError

from codeexec.config import OperatorConfig
from codeexec.models import (
    CPU_PATTERN,
    MAX_CODE_BYTES,
    MAX_ENV_BYTES,
    MAX_INPUT_BYTES,
    MAX_STDIN_BYTES,
    MEMORY_PATTERN,
    ExecutionSpec,
    Resources,
    RuntimeSpec,
)
from codeexec.vocabulary import (
    BINDING_NOT_FOUND,
    BINDINGS_UNAVAILABLE,
    CODE_TOO_LARGE,
    INVALID_SPEC,
    QUEUE_TIMEOUT_TOO_LONG,
    RESOURCES_TOO_LARGE,
    RUNTIME_CLASS_MISSING,
    TIMEOUT_TOO_LONG,
    UNKNOWN_LANGUAGE,
)

# Below these a sandbox cannot even start its interpreter; say so up front.
MIN_CPU_MILLIS = 10
MIN_MEMORY_BYTES = 16 * 1024**2

_MEMORY_UNITS = {
    "": 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
}


def parse_cpu(quantity: str) -> int:
    """CPU quantity ("500m", "1", "0.25") → millicores, rounded up like Kubernetes does."""
    if not re.fullmatch(CPU_PATTERN, quantity):
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    if quantity.endswith("m"):
        return int(quantity[:-1])
    return math.ceil(Decimal(quantity) * 1000)


def parse_memory(quantity: str) -> int:
    """Memory quantity ("256Mi", "1G", "1000") → bytes."""
    match = re.fullmatch(MEMORY_PATTERN, quantity)
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    unit = match.group(1) or ""
    return int(quantity.removesuffix(unit)) * _MEMORY_UNITS[unit]


def format_cpu(millis: int) -> str:
    return f"{millis}m"


def format_memory(size: int) -> str:
    """Bytes → the largest binary unit that divides them exactly (a valid Kubernetes quantity)."""
    for unit in ("Gi", "Mi", "Ki"):
        if size % _MEMORY_UNITS[unit] == 0:
            return f"{size // _MEMORY_UNITS[unit]}{unit}"
    return str(size)


# field → (parse, format, minimum)
_QUANTITY_RULES: dict[str, tuple[Callable[[str], int], Callable[[int], str], int]] = {
    "cpu": (parse_cpu, format_cpu, MIN_CPU_MILLIS),
    "memory": (parse_memory, format_memory, MIN_MEMORY_BYTES),
}


@dataclass(frozen=True)
class Rejection:
    """Why an Execution cannot run: a stable reason and a message naming the field."""

    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """Everything validated and resolved that the builders need."""

    spec: ExecutionSpec
    runtime_name: str
    runtime: RuntimeSpec
    timeout_seconds: int
    cpu_millis: int
    memory_bytes: int
    queue_timeout_seconds: int
    # spec.bindings → each binding's type, as found when admitted (empty: none named, or not checked).
    bindings: Mapping[str, str] = dataclasses.field(default_factory=dict)


def parse_spec(raw: Mapping[str, Any]) -> ExecutionSpec | Rejection:
    try:
        return ExecutionSpec.model_validate(dict(raw))
    except ValidationError as error:
        first = error.errors()[0]
        return Rejection(INVALID_SPEC, f"{field_path(first['loc'])}: {first['msg']}")


def parse_runtimes(items: Iterable[Mapping[str, Any]]) -> dict[str, RuntimeSpec]:
    """Runtime objects from the API → name → spec. Objects that fail the model are left out:
    one broken Runtime must not stop every other language."""
    runtimes = {}
    for item in items:
        try:
            runtimes[item["metadata"]["name"]] = RuntimeSpec.model_validate(item.get("spec", {}))
        except ValidationError:
            continue
    return runtimes


def plan_execution(
    raw_spec: Mapping[str, Any],
    runtimes: Mapping[str, RuntimeSpec],
    config: OperatorConfig,
    runtime_class_exists: bool,
    granted: Mapping[str, str] | None = None,
) -> Plan | Rejection:
    """The whole decision: parse, check every limit, resolve defaults. `granted`: the SandboxBindings of the
    Execution's namespace (name → type); None leaves spec.bindings unchecked (the webhook: bindings are the
    namespace's state, which the operator reads when it admits)."""
    spec = parse_spec(raw_spec)
    if isinstance(spec, Rejection):
        return spec
    return _plan_parsed(spec, runtimes, config, runtime_class_exists, granted)


def _plan_parsed(
    spec: ExecutionSpec,
    runtimes: Mapping[str, RuntimeSpec],
    config: OperatorConfig,
    runtime_class_exists: bool,
    granted: Mapping[str, str] | None,
) -> Plan | Rejection:
    """The runtime a parsed spec names, its limits checked and its defaults filled in."""
    found = find_runtime(spec.language, runtimes)
    if found is None:
        installed = ", ".join(sorted(runtimes)) or "none"
        return Rejection(
            UNKNOWN_LANGUAGE,
            f'spec.language "{spec.language}" is not an installed Runtime or alias (installed: {installed})',
        )
    runtime_name, runtime = found

    size_problem = _size_rejection(spec)
    if size_problem is not None:
        return size_problem

    timeout = _resolve_timeout(spec, runtime_name, runtime, config)
    if isinstance(timeout, Rejection):
        return timeout
    queue_timeout = resolve_queue_timeout(spec.queue_timeout_seconds, config)
    if isinstance(queue_timeout, Rejection):
        return queue_timeout

    resources = resolve_resources(spec.resources, runtime_name, runtime, config)
    if isinstance(resources, Rejection):
        return resources
    cpu, memory = resources

    bindings = resolve_bindings(spec.bindings, config, granted)
    if isinstance(bindings, Rejection):
        return bindings

    if config.runtime_class and not runtime_class_exists:
        return Rejection(
            RUNTIME_CLASS_MISSING,
            f'RuntimeClass "{config.runtime_class}" does not exist; the operator runs no sandbox without it',
        )
    return Plan(spec, runtime_name, runtime, timeout, cpu, memory, queue_timeout, bindings)


def resolve_bindings(
    names: Sequence[str], config: OperatorConfig, granted: Mapping[str, str] | None
) -> dict[str, str] | Rejection:
    """spec.bindings → each binding's type, when the operator has a broker and the namespace every binding."""
    if granted is None or not names:
        return {}
    if not config.broker_service:
        return Rejection(
            BINDINGS_UNAVAILABLE,
            "spec.bindings names SandboxBindings, but this operator has no broker (installed without it)",
        )
    missing = [name for name in names if name not in granted]
    if missing:
        listed = ", ".join(f'"{name}"' for name in missing)
        return Rejection(BINDING_NOT_FOUND, f"spec.bindings: no SandboxBinding {listed} in this namespace")
    return {name: granted[name] for name in names}


def find_runtime(language: str, runtimes: Mapping[str, RuntimeSpec]) -> tuple[str, RuntimeSpec] | None:
    """A Runtime named `language`, else the first (by name) that has it as an alias."""
    if language in runtimes:
        return language, runtimes[language]
    for name in sorted(runtimes):
        if language in runtimes[name].aliases:
            return name, runtimes[name]
    return None


def _size_rejection(spec: ExecutionSpec) -> Rejection | None:
    code_bytes = len(spec.code.encode())
    if code_bytes > MAX_CODE_BYTES:
        return Rejection(
            CODE_TOO_LARGE,
            f"spec.code is {code_bytes} bytes; the maximum is {MAX_CODE_BYTES}",
        )
    sizes = {
        "spec.stdin": (len((spec.stdin or "").encode()), MAX_STDIN_BYTES),
        "spec.input": (len(spec.input_json().encode()), MAX_INPUT_BYTES),
        "spec.env": (len(spec.env_json().encode()), MAX_ENV_BYTES),
    }
    for field, (size, maximum) in sizes.items():
        if size > maximum:
            return Rejection(INVALID_SPEC, f"{field} is {size} bytes; the maximum is {maximum}")
    return None


def _resolve_timeout(
    spec: ExecutionSpec, runtime_name: str, runtime: RuntimeSpec, config: OperatorConfig
) -> int | Rejection:
    maximum = min(runtime.max_timeout_seconds or config.max_timeout_seconds, config.max_timeout_seconds)
    if spec.timeout_seconds is None:
        # An operator maximum below a Runtime's default shortens the default, never rejects.
        return min(runtime.default_timeout_seconds, maximum)
    if spec.timeout_seconds > maximum:
        return Rejection(
            TIMEOUT_TOO_LONG,
            f"spec.timeoutSeconds {spec.timeout_seconds} exceeds the maximum {maximum} for runtime {runtime_name}",
        )
    return spec.timeout_seconds


def resolve_queue_timeout(requested: int | None, config: OperatorConfig) -> int | Rejection:
    """spec.queueTimeoutSeconds, or the operator's default (shortened to its maximum, never rejected)."""
    maximum = config.max_queue_timeout_seconds
    if requested is None:
        return min(config.default_queue_timeout_seconds, maximum)
    if requested > maximum:
        return Rejection(
            QUEUE_TIMEOUT_TOO_LONG, f"spec.queueTimeoutSeconds {requested} exceeds the operator's maximum {maximum}"
        )
    return requested


def resolve_resources(
    requested: Resources | None, runtime_name: str, runtime: RuntimeSpec, config: OperatorConfig
) -> tuple[int, int] | Rejection:
    """CPU millicores and memory bytes of a sandbox: `requested` (spec.resources of an Execution or of a
    WarmPool), else the Runtime's defaults, then the operator's; bounded by both maxima. One function for
    both, so a plain Execution gets exactly the size of a plain pool."""
    cpu = _resolve_quantity("cpu", requested, runtime_name, runtime, config)
    if isinstance(cpu, Rejection):
        return cpu
    memory = _resolve_quantity("memory", requested, runtime_name, runtime, config)
    if isinstance(memory, Rejection):
        return memory
    return cpu, memory


def _resolve_quantity(
    field: Literal["cpu", "memory"],
    requested_resources: Resources | None,
    runtime_name: str,
    runtime: RuntimeSpec,
    config: OperatorConfig,
) -> int | Rejection:
    parse, format_quantity, minimum = _QUANTITY_RULES[field]
    operator_max: str = getattr(config, f"max_{field}")
    runtime_max = _quantity(runtime.max_resources, field)
    maximum_text = operator_max
    if runtime_max is not None and parse(runtime_max) < parse(operator_max):
        maximum_text = runtime_max
    maximum = parse(maximum_text)

    requested = _quantity(requested_resources, field)
    if requested is None:
        default = _quantity(runtime.default_resources, field) or getattr(config, f"default_{field}")
        return min(parse(default), maximum)
    value = parse(requested)
    if value > maximum:
        return Rejection(
            RESOURCES_TOO_LARGE,
            f"spec.resources.{field} {requested} exceeds the maximum {maximum_text} for runtime {runtime_name}",
        )
    if value < minimum:
        return Rejection(
            INVALID_SPEC, f"spec.resources.{field} {requested} is below the minimum {format_quantity(minimum)}"
        )
    return value


def _quantity(resources: Resources | None, field: Literal["cpu", "memory"]) -> str | None:
    if resources is None:
        return None
    return resources.cpu if field == "cpu" else resources.memory


def field_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
