"""Execution spec parsing, the limits of validation.py, and quantity parsing."""

from __future__ import annotations

from typing import Any

import pytest

from codeexec import vocabulary
from codeexec.config import OperatorConfig
from codeexec.models import MAX_CODE_BYTES, RuntimeSpec
from codeexec.validation import (
    Plan,
    Rejection,
    format_memory,
    parse_cpu,
    parse_memory,
    parse_runtimes,
    plan_execution,
)
from tests.unit.factories import JAVASCRIPT, POD_LEVEL_FIELDS, PYTHON, RUNTIMES, python_runtime, spec


def decide(
    config: OperatorConfig | None = None,
    runtimes: dict[str, RuntimeSpec] | None = None,
    runtime_class_exists: bool = True,
    **fields: Any,
) -> Plan | Rejection:
    return plan_execution(
        spec(**fields),
        RUNTIMES if runtimes is None else runtimes,
        config or OperatorConfig(),
        runtime_class_exists,
    )


def rejection(**kwargs: Any) -> Rejection:
    result = decide(**kwargs)
    assert isinstance(result, Rejection), result
    return result


def accepted(**kwargs: Any) -> Plan:
    result = decide(**kwargs)
    assert isinstance(result, Plan), result
    return result


def test_minimal_spec_gets_defaults() -> None:
    plan = accepted()
    assert plan.runtime_name == "python"
    assert plan.runtime == PYTHON
    assert plan.timeout_seconds == 30
    assert plan.cpu_millis == 500
    assert plan.memory_bytes == 256 * 1024**2
    assert plan.spec.input is None
    assert plan.spec.args == []
    assert plan.spec.env == []
    assert plan.spec.network is None


def test_alias_resolves_to_runtime() -> None:
    assert accepted(language="js").runtime_name == "javascript"
    assert accepted(language="js").runtime == JAVASCRIPT


@pytest.mark.parametrize("field", [*POD_LEVEL_FIELDS, "command"])
def test_extra_fields_are_rejected(field: str) -> None:
    result = rejection(**{field: "anything"})
    assert result.reason == vocabulary.INVALID_SPEC
    assert result.message == f"spec.{field}: Extra inputs are not permitted"


def test_unknown_language() -> None:
    result = rejection(language="cobol")
    assert result.reason == vocabulary.UNKNOWN_LANGUAGE
    assert result.message == (
        'spec.language "cobol" is not an installed Runtime or alias (installed: javascript, python)'
    )


def test_unknown_language_when_no_runtime_is_installed() -> None:
    assert rejection(runtimes={}).reason == vocabulary.UNKNOWN_LANGUAGE


def test_code_limit_counts_bytes_not_characters() -> None:
    accepted(code="a" * MAX_CODE_BYTES)
    # Two bytes per character: well under the schema's maxLength, over the byte limit.
    result = rejection(code="é" * (MAX_CODE_BYTES // 2 + 1))
    assert result.reason == vocabulary.CODE_TOO_LARGE
    assert result.message == f"spec.code is {MAX_CODE_BYTES + 2} bytes; the maximum is {MAX_CODE_BYTES}"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"stdin": "x" * (256 * 1024 + 1)}, "spec.stdin"),
        ({"input": {"data": "x" * (128 * 1024)}}, "spec.input"),
        ({"env": [{"name": f"V{i}", "value": "x" * 4096} for i in range(9)]}, "spec.env"),
    ],
)
def test_other_size_limits(fields: dict[str, Any], field: str) -> None:
    result = rejection(**fields)
    assert result.reason == vocabulary.INVALID_SPEC
    assert result.message.startswith(f"{field} is ")


@pytest.mark.parametrize("timeout", [0, -1, 3601])
def test_timeout_outside_the_schema_bounds_is_invalid(timeout: int) -> None:
    result = rejection(timeoutSeconds=timeout)
    assert result.reason == vocabulary.INVALID_SPEC
    assert result.message.startswith("spec.timeoutSeconds: ")


def test_timeout_above_the_operator_maximum() -> None:
    result = rejection(timeoutSeconds=900)
    assert result.reason == vocabulary.TIMEOUT_TOO_LONG
    assert result.message == "spec.timeoutSeconds 900 exceeds the maximum 600 for runtime python"


def test_timeout_above_the_runtime_maximum() -> None:
    strict = python_runtime(maxTimeoutSeconds=60)
    result = rejection(runtimes={"python": strict}, timeoutSeconds=61)
    assert result.reason == vocabulary.TIMEOUT_TOO_LONG
    assert result.message == "spec.timeoutSeconds 61 exceeds the maximum 60 for runtime python"
    assert accepted(runtimes={"python": strict}, timeoutSeconds=60).timeout_seconds == 60


def test_queue_timeout_above_the_operator_maximum_is_refused_with_its_own_reason() -> None:
    result = rejection(queueTimeoutSeconds=3601)
    assert result.reason == vocabulary.QUEUE_TIMEOUT_TOO_LONG
    assert result.message == "spec.queueTimeoutSeconds 3601 exceeds the operator's maximum 3600"
    assert accepted(queueTimeoutSeconds=3600).queue_timeout_seconds == 3600
    assert accepted().queue_timeout_seconds == 1800
    assert rejection(queueTimeoutSeconds=0).reason == vocabulary.INVALID_SPEC


def test_runtime_default_timeout_is_capped_by_the_operator_maximum() -> None:
    slow = python_runtime(defaultTimeoutSeconds=900)
    assert accepted(runtimes={"python": slow}).timeout_seconds == 600


def test_resources_above_the_operator_maximum() -> None:
    result = rejection(resources={"memory": "2Gi"})
    assert result.reason == vocabulary.RESOURCES_TOO_LARGE
    assert result.message == "spec.resources.memory 2Gi exceeds the maximum 1Gi for runtime python"
    result = rejection(resources={"cpu": "2500m"})
    assert result.reason == vocabulary.RESOURCES_TOO_LARGE
    assert result.message == "spec.resources.cpu 2500m exceeds the maximum 2 for runtime python"


def test_resources_above_the_runtime_maximum() -> None:
    small = python_runtime(maxResources={"cpu": "1", "memory": "512Mi"})
    result = rejection(runtimes={"python": small}, resources={"memory": "768Mi"})
    assert result.reason == vocabulary.RESOURCES_TOO_LARGE
    assert result.message == "spec.resources.memory 768Mi exceeds the maximum 512Mi for runtime python"


def test_resources_below_the_minimum() -> None:
    result = rejection(resources={"memory": "1Mi"})
    assert result.reason == vocabulary.INVALID_SPEC
    assert result.message == "spec.resources.memory 1Mi is below the minimum 16Mi"
    assert rejection(resources={"cpu": "1m"}).message == "spec.resources.cpu 1m is below the minimum 10m"


def test_resources_come_from_spec_then_runtime_then_operator() -> None:
    assert accepted(resources={"cpu": "0.25", "memory": "1G"}).cpu_millis == 250
    assert accepted(resources={"cpu": "0.25", "memory": "1G"}).memory_bytes == 1000**3
    sized = python_runtime(defaultResources={"cpu": "1", "memory": "512Mi"})
    plan = accepted(runtimes={"python": sized})
    assert (plan.cpu_millis, plan.memory_bytes) == (1000, 512 * 1024**2)
    config = OperatorConfig(default_cpu="200m", default_memory="128Mi")
    plan = accepted(config=config)
    assert (plan.cpu_millis, plan.memory_bytes) == (200, 128 * 1024**2)


def test_missing_runtime_class_fails_closed() -> None:
    result = rejection(runtime_class_exists=False)
    assert result.reason == vocabulary.RUNTIME_CLASS_MISSING
    assert result.message == 'RuntimeClass "gvisor" does not exist; the operator runs no sandbox without it'


def test_runtime_class_can_be_switched_off_explicitly() -> None:
    accepted(config=OperatorConfig(runtime_class=""), runtime_class_exists=False)


@pytest.mark.parametrize(
    "env",
    [
        [{"name": "CODEEXEC_INPUT_FILE", "value": "/etc/passwd"}],
        [{"name": "1ABC", "value": ""}],
        [{"name": "A-B", "value": ""}],
        [{"name": "", "value": ""}],
        [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}],
        [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    ],
)
def test_bad_env_is_invalid(env: list[dict[str, Any]]) -> None:
    result = rejection(env=env)
    assert result.reason == vocabulary.INVALID_SPEC
    assert result.message.startswith("spec.env")


def test_good_env() -> None:
    plan = accepted(env=[{"name": "GREETING", "value": "hi"}, {"name": "_x1"}])
    assert [(var.name, var.value) for var in plan.spec.env] == [("GREETING", "hi"), ("_x1", "")]


@pytest.mark.parametrize(
    "domain",
    [
        "example.com",
        "api.example.com:443",
        "a-b.c0.io",
        "x.y.z.example.org:8080",
        "example.com:1",
        "example.com:65535",
        "xn--bcher-kva.example",
        ("a" * 63 + ".") * 3 + "b" * 61 + ":65535",  # a 253-character name with the longest port
    ],
)
def test_good_allowed_domains(domain: str) -> None:
    assert accepted(network={"allowedDomains": [domain]}).spec.network is not None


@pytest.mark.parametrize(
    "domain",
    [
        "localhost",
        "*.example.com",
        "Example.com",
        "example.com.",
        "10.0.0.1",
        "169.254.169.254",
        "http://example.com",
        "example.com:",
        "example.com:123456",
        "example.com:0",
        "example.com:65536",
        "example.com:99999",
        "example.com:080",
        "example.com:443:80",
        "[::1]:443",
        "::1",
        "example.123",
        "exa_mple.com",
        "example.com ",
        "",
        "-bad.example.com",
        "example.com/path",
    ],
)
def test_bad_allowed_domains(domain: str) -> None:
    result = rejection(network={"allowedDomains": [domain]})
    assert result.reason == vocabulary.INVALID_SPEC
    assert result.message.startswith("spec.network.allowedDomains[0]: ")


def test_host_names_longer_than_dns_allows_are_invalid() -> None:
    name = ("a" * 63 + ".") * 3 + "b" * 62  # 254 characters
    result = rejection(network={"allowedDomains": [name]})
    assert result.reason == vocabulary.INVALID_SPEC
    assert result.message.startswith("spec.network.allowedDomains: ")
    assert "at most 253 characters" in result.message


def test_too_many_allowed_domains_are_invalid() -> None:
    domains = [f"host{i}.example.com" for i in range(33)]
    assert rejection(network={"allowedDomains": domains}).message.startswith("spec.network.allowedDomains: ")
    assert accepted(network={"allowedDomains": domains[:32]}).spec.network is not None


def test_too_many_args_is_invalid() -> None:
    assert rejection(args=["a"] * 65).message.startswith("spec.args: ")
    assert accepted(args=["a"] * 64).spec.args == ["a"] * 64


def test_negative_ttl_is_invalid() -> None:
    assert rejection(ttlSecondsAfterFinished=-1).message.startswith("spec.ttlSecondsAfterFinished: ")


WITH_BROKER = OperatorConfig(broker_service="codeexec-system/code-exec-broker")


def test_bindings_named_and_granted_are_planned_with_their_types() -> None:
    planned = plan_execution(
        spec(bindings=["notes", "audit"]), RUNTIMES, WITH_BROKER, True, {"audit": "db", "notes": "db", "x": "db"}
    )
    assert isinstance(planned, Plan)
    assert planned.bindings == {"notes": "db", "audit": "db"}
    assert accepted(config=WITH_BROKER).bindings == {}


def test_a_binding_without_its_sandboxbinding_is_rejected_by_name() -> None:
    refused = plan_execution(spec(bindings=["notes", "gone", "lost"]), RUNTIMES, WITH_BROKER, True, {"notes": "db"})
    assert refused == Rejection(
        vocabulary.BINDING_NOT_FOUND, 'spec.bindings: no SandboxBinding "gone", "lost" in this namespace'
    )


def test_bindings_without_a_broker_are_unavailable() -> None:
    refused = plan_execution(spec(bindings=["notes"]), RUNTIMES, OperatorConfig(), True, {"notes": "db"})
    assert isinstance(refused, Rejection)
    assert refused.reason == vocabulary.BINDINGS_UNAVAILABLE
    assert "no broker" in refused.message


def test_bindings_are_left_unchecked_without_the_namespaces_bindings() -> None:
    """The webhook's case: the operator checks them when it admits (phase Rejected, with the reason)."""
    assert accepted(bindings=["notes"]).bindings == {}


@pytest.mark.parametrize("bindings", [["Notes"], ["a", "a"], [f"b{i}" for i in range(9)], ["x" * 254]])
def test_bad_binding_names_are_invalid(bindings: list[str]) -> None:
    assert rejection(bindings=bindings).reason == vocabulary.INVALID_SPEC


def test_parse_runtimes_skips_broken_objects() -> None:
    items = [
        {"metadata": {"name": "python"}, "spec": PYTHON.model_dump(by_alias=True, exclude_none=True)},
        {"metadata": {"name": "broken"}, "spec": {"image": "x"}},
    ]
    assert parse_runtimes(items) == {"python": PYTHON}


@pytest.mark.parametrize("file_name", ["input.json", "stdin", "env.json", "../main.py", "a/b.py", ".hidden"])
def test_runtime_file_name_cannot_clash_or_escape(file_name: str) -> None:
    with pytest.raises(ValueError, match=r"fileName|file_name"):
        python_runtime(fileName=file_name)


@pytest.mark.parametrize(
    ("quantity", "millis"),
    [("500m", 500), ("1", 1000), ("2", 2000), ("0.25", 250), ("2.5", 2500), ("0.0001", 1), ("0", 0)],
)
def test_parse_cpu(quantity: str, millis: int) -> None:
    assert parse_cpu(quantity) == millis


@pytest.mark.parametrize("quantity", ["", "m", "1.5m", "-1", "1Gi", "1e3", " 1", "abc"])
def test_parse_cpu_rejects(quantity: str) -> None:
    with pytest.raises(ValueError, match="not a CPU quantity"):
        parse_cpu(quantity)


@pytest.mark.parametrize(
    ("quantity", "size"),
    [
        ("1000", 1000),
        ("1k", 1000),
        ("1K", 1000),
        ("2M", 2_000_000),
        ("1G", 1_000_000_000),
        ("1Ki", 1024),
        ("256Mi", 256 * 1024**2),
        ("1Gi", 1024**3),
    ],
)
def test_parse_memory(quantity: str, size: int) -> None:
    assert parse_memory(quantity) == size


@pytest.mark.parametrize("quantity", ["", "Mi", "1.5Gi", "-1", "1Ti", "1mi", "1 Gi", "1MiB"])
def test_parse_memory_rejects(quantity: str) -> None:
    with pytest.raises(ValueError, match="not a memory quantity"):
        parse_memory(quantity)


@pytest.mark.parametrize(
    ("size", "quantity"),
    [
        (1024**3, "1Gi"),
        (256 * 1024**2, "256Mi"),
        (1536 * 1024, "1536Ki"),
        (1000 * 1024, "1000Ki"),
        (1000**3, "1000000000"),
        (1000, "1000"),
    ],
)
def test_format_memory(size: int, quantity: str) -> None:
    assert format_memory(size) == quantity
    assert parse_memory(quantity) == size
