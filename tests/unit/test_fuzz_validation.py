"""Property-based tests (hypothesis) of the operator's decision on arbitrary Execution specs: planning
(validation.py), the pinning of allowed domains (lifecycle.pin_allowed_domains) and the webhook's refusal
(admission.py). Arbitrary JSON-like dicts and structured specs with boundary values; derandomized and
bounded, so CI sees the same examples every run in a few seconds.

The values are what the API server can hand the operator: JSON with string keys, integers within int64
(larger ones arrive as floats), finite floats, and no lone surrogates (Go's JSON encoder replaces them)."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any
from unittest import mock

import kopf
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import codeexec.handlers
from codeexec import admission, lifecycle, resolver, vocabulary
from codeexec.config import OperatorConfig
from codeexec.models import (
    MAX_ALLOWED_DOMAINS,
    MAX_ARGS,
    MAX_CODE_BYTES,
    MAX_ENV_BYTES,
    MAX_ENV_VARS,
    MAX_INPUT_BYTES,
    MAX_INPUT_DEPTH,
    MAX_STDIN_BYTES,
    MAX_TIMEOUT_SECONDS,
    ExecutionSpec,
    RuntimeSpec,
    json_depth,
)
from codeexec.resolver import Resolution
from codeexec.validation import Plan, Rejection, parse_cpu, parse_memory, plan_execution
from tests.unit.factories import JAVASCRIPT, PYTHON, python_runtime
from tests.unit.fakes import FakeCluster

# What a Rejection may carry (status.reason of phase Rejected, or Failed for the RuntimeClass):
# the stable reasons users and alerts match on (vocabulary.py).
STABLE_REJECTION_REASONS = frozenset(
    {
        vocabulary.INVALID_SPEC,
        vocabulary.UNKNOWN_LANGUAGE,
        vocabulary.TIMEOUT_TOO_LONG,
        vocabulary.RESOURCES_TOO_LARGE,
        vocabulary.CODE_TOO_LARGE,
        vocabulary.RUNTIME_CLASS_MISSING,
        vocabulary.DOMAIN_NOT_ALLOWED,
        vocabulary.DOMAIN_UNRESOLVABLE,
        vocabulary.QUEUE_TIMEOUT_TOO_LONG,
    }
)
# Fixed examples, no deadline (CI machines are slow), no database: the same run everywhere.
FUZZ = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT64 = 2**63 - 1

# --- JSON-like values -------------------------------------------------------------------------------------

text = st.text(max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-INT64 - 1, max_value=INT64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


class NestedList(list[Any]):
    """A list nested `depth` levels deep that hypothesis prints in one line (its printer recurses)."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<a list nested {json_depth(self)} levels deep>")


class NestedDict(dict[str, Any]):
    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<a dict nested {json_depth(self)} levels deep>")


def nested(depth: int, container: str) -> Any:
    """A value `depth` levels deep, built without recursion."""
    value: Any = 1
    for _ in range(depth - 1):
        value = [value] if container == "list" else {"a": value}
    return NestedList([value]) if container == "list" else NestedDict({"a": value})


deep_values = st.builds(
    nested, st.sampled_from([MAX_INPUT_DEPTH, MAX_INPUT_DEPTH + 1, 2000, 9990]), st.sampled_from(["list", "dict"])
)


def sized(limit: int) -> st.SearchStrategy[str]:
    """Strings whose UTF-8 size is at, just under or just over `limit` bytes, in one- to four-byte characters."""

    def build(char: str, delta: int) -> str:
        size = len(char.encode())
        count = (limit + delta) // size
        return char * count + "x" * ((limit + delta) - count * size)

    return st.builds(build, st.sampled_from(["x", "é", "€", "😀"]), st.sampled_from([-1, 0, 1, 4]))


def counted(limit: int, item: Callable[[int], Any]) -> st.SearchStrategy[list[Any]]:
    """Lists of `limit` - 1, `limit` or `limit` + 1 distinct items (cheap to draw, unlike st.lists of that size)."""
    return st.sampled_from([limit - 1, limit, limit + 1]).map(lambda count: [item(i) for i in range(count)])


# --- Structured specs: each field of the right type with boundary values, then at most one hostile field --

# A valid value is drawn about as often as an odd one: most specs then test one boundary at a time.
languages = (
    st.sampled_from(["python", "py", "python3", "javascript", "js"])
    | st.sampled_from(["Python", " python", "ruby", "x" * 63, "x" * 64])
    | st.text(min_size=1, max_size=70)
)
seconds = st.integers(min_value=1, max_value=600) | st.sampled_from(
    [-1, 0, 1, 599, 600, 601, 3600, 3601, INT64, -INT64 - 1]
)
ODD_CPUS = ["0", "0m", "9m", "2000m", "2001m", "2.0001", "0.01", "0.001", "1e3", " 1", "-1", "1.", ".5", "1" * 33]
cpus = (
    st.sampled_from(["10m", "100m", "500m", "1", "1.5", "2", "2000m"])
    | st.sampled_from(ODD_CPUS)
    | st.from_regex(r"\A[0-9]{1,40}(\.[0-9]{1,40})?m?\Z")
)
memories = (
    st.sampled_from(["16Mi", "64Mi", "256Mi", "1Gi", "1024Mi", "1G"])
    | st.sampled_from(
        ["0", "16Mi", "15Mi", "16777215", "256Mi", "1Gi", "1025Mi", "1G", "1Ti", "1e9", "-1Mi", "1.5Gi", "9" * 33]
    )
    | st.from_regex(r"\A[0-9]{1,40}(Ki|Mi|Gi|k|K|M|G)?\Z")
)
ODD_ENV_NAMES = ["A", "_a1", "CODEEXEC_X", "codeexec_x", "1A", "A-B", "", "A" * 128, "A" * 129]
env_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z") | st.sampled_from(ODD_ENV_NAMES) | text
env_vars = st.fixed_dictionaries({"name": env_names}, optional={"value": st.text(max_size=50) | sized(4096)})
domains = st.sampled_from(
    [
        "example.com",
        "api.example.com:443",
        "example.com:0",
        "example.com:65535",
        "example.com:65536",
        "Example.com",
        "localhost",
        "metadata.google.internal",
        "kubernetes.default.svc",
        "169.254.169.254",
        "10.0.0.1",
        "[::1]",
        "*.example.com",
        "exa mple.com",
        "bücher.de",
        "xn--bcher-kva.de",
        "a." * 126 + "com",
        "x" * 64 + ".com",
        "example.com:",
        "example.invalid",
    ]
) | st.from_regex(r"\A[a-z0-9.:-]{1,40}\Z")
typed_fields = st.fixed_dictionaries(
    {"language": languages, "code": st.text(max_size=50) | sized(MAX_CODE_BYTES)},
    optional={
        "stdin": st.text(max_size=50) | sized(MAX_STDIN_BYTES),
        "input": json_values | deep_values | sized(MAX_INPUT_BYTES - 2),
        "args": st.lists(st.text(max_size=10), max_size=3) | counted(MAX_ARGS, lambda i: f"arg{i}"),
        "env": st.lists(env_vars, max_size=3) | counted(MAX_ENV_VARS, lambda i: {"name": f"V{i}", "value": "v" * 600}),
        "timeoutSeconds": seconds,
        "resources": st.fixed_dictionaries({}, optional={"cpu": cpus, "memory": memories}),
        "network": st.fixed_dictionaries(
            {},
            optional={"allowedDomains": st.lists(domains, max_size=3) | counted(MAX_ALLOWED_DOMAINS, "d{}.com".format)},
        ),
        "ttlSecondsAfterFinished": seconds,
    },
)
# Within the schema, at or near the limits: plans, and the rejections of limits (timeout, resources, sizes).
valid_fields = st.fixed_dictionaries(
    {
        "language": st.sampled_from(["python", "py", "javascript", "js"]),
        "code": st.text(max_size=50) | sized(MAX_CODE_BYTES),
    },
    optional={
        "stdin": st.text(max_size=50),
        "input": json_values,
        "args": st.lists(st.text(max_size=10), max_size=3),
        "env": st.lists(st.fixed_dictionaries({"name": st.from_regex(r"\A[A-Z]{1,8}\Z")}), max_size=3, unique_by=str),
        "timeoutSeconds": st.integers(min_value=1, max_value=MAX_TIMEOUT_SECONDS),
        "resources": st.fixed_dictionaries(
            {},
            optional={
                "cpu": st.sampled_from(["10m", "500m", "1", "2", "3"]),
                "memory": st.sampled_from(["16Mi", "1Gi", "2Gi"]),
            },
        ),
        "ttlSecondsAfterFinished": st.integers(min_value=0, max_value=INT64),
    },
)
# Anything of the wrong type, or absurd.
wrong = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-INT64 - 1, max_value=INT64),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
    st.lists(scalars, max_size=3),
    st.dictionaries(text, scalars, max_size=3),
)
field_names = st.sampled_from(sorted(info.alias or name for name, info in ExecutionSpec.model_fields.items()))
# Pod-level fields no Execution may choose, and strangers.
foreign_names = st.sampled_from(["image", "privileged", "nodeName", "runtimeClassName", "serviceAccountName"]) | text
hostile_field = st.dictionaries(field_names | foreign_names, wrong, min_size=1, max_size=1)
structured_specs = st.builds(
    lambda typed, hostile: {**typed, **hostile}, typed_fields, st.just({}) | st.just({}) | hostile_field
)
# Any mix of the model's own field names and strangers, with any JSON values.
arbitrary_specs = st.dictionaries(field_names | text, json_values, max_size=8)
specs = valid_fields | structured_specs | arbitrary_specs

# --- Operator settings and Runtimes, within their own schemas --------------------------------------------

configs = st.builds(
    OperatorConfig,
    max_timeout_seconds=st.integers(min_value=1, max_value=MAX_TIMEOUT_SECONDS),
    max_cpu=st.sampled_from(["100m", "1", "2", "16"]),
    max_memory=st.sampled_from(["64Mi", "1Gi", "8Gi"]),
    default_cpu=st.sampled_from(["10m", "500m", "4"]),
    default_memory=st.sampled_from(["16Mi", "256Mi", "2Gi"]),
)
limited_python = st.builds(
    lambda timeout, maximum, cpu, memory: python_runtime(
        defaultTimeoutSeconds=timeout,
        maxTimeoutSeconds=maximum,
        defaultResources={"cpu": cpu, "memory": memory},
        maxResources={"cpu": cpu, "memory": memory},
    ),
    st.integers(min_value=1, max_value=MAX_TIMEOUT_SECONDS),
    st.integers(min_value=1, max_value=MAX_TIMEOUT_SECONDS),
    st.sampled_from(["50m", "1", "3"]),
    st.sampled_from(["32Mi", "512Mi", "4Gi"]),
)
runtime_sets = st.builds(
    lambda python: {"python": python, "javascript": JAVASCRIPT},
    st.just(PYTHON) | limited_python,
) | st.just({})


def assert_stable(rejection: Rejection) -> None:
    assert rejection.reason in STABLE_REJECTION_REASONS, rejection
    assert rejection.message.strip(), rejection


@FUZZ
@given(spec=specs, runtimes=runtime_sets, config=configs, class_exists=st.booleans())
@example(
    spec={"language": "python", "code": "x", "input": nested(2000, "list")},
    runtimes={"python": PYTHON},
    config=OperatorConfig(),
    class_exists=True,
)
def test_every_spec_is_planned_or_rejected_with_a_stable_reason(
    spec: dict[str, Any], runtimes: dict[str, RuntimeSpec], config: OperatorConfig, class_exists: bool
) -> None:
    """Safeguard: planning turns every input into a Plan or a Rejection (never an exception that would
    leave the Execution unhandled and Kopf retrying); the @example is the input nested 2,000 levels deep
    that made the size check's json.dumps raise RecursionError before ExecutionSpec limited the depth."""
    outcome = plan_execution(spec, runtimes, config, class_exists)
    if isinstance(outcome, Rejection):
        assert_stable(outcome)
        return
    assert isinstance(outcome, Plan)
    # Accepted plans respect every maximum: the operator's, the Runtime's, the byte limits.
    runtime = runtimes[outcome.runtime_name]
    assert outcome.runtime == runtime
    assert 1 <= outcome.timeout_seconds <= config.max_timeout_seconds
    assert outcome.timeout_seconds <= (runtime.max_timeout_seconds or MAX_TIMEOUT_SECONDS)
    assert outcome.cpu_millis <= parse_cpu(config.max_cpu)
    assert outcome.memory_bytes <= parse_memory(config.max_memory)
    if runtime.max_resources is not None:
        assert outcome.cpu_millis <= parse_cpu(runtime.max_resources.cpu or config.max_cpu)
        assert outcome.memory_bytes <= parse_memory(runtime.max_resources.memory or config.max_memory)
    assert len(outcome.spec.code.encode()) <= MAX_CODE_BYTES
    assert len((outcome.spec.stdin or "").encode()) <= MAX_STDIN_BYTES
    assert len(outcome.spec.input_json().encode()) <= MAX_INPUT_BYTES
    assert len(outcome.spec.env_json().encode()) <= MAX_ENV_BYTES
    assert class_exists or not config.runtime_class


@FUZZ
@given(spec=specs, runtimes=runtime_sets, config=configs)
def test_the_webhook_refuses_exactly_what_planning_rejects(
    spec: dict[str, Any], runtimes: dict[str, RuntimeSpec], config: OperatorConfig
) -> None:
    """Safeguard: admission.refusal agrees with the operator's planning (same reason, same message), so
    what the webhook lets in the operator accepts too, and a refusal names the reason the operator would
    write. Where they do not overlap: a missing RuntimeClass is the operator's alone (RuntimeClassMissing)."""
    refusal = admission.refusal(spec, runtimes, config)
    planned = plan_execution(spec, runtimes, config, runtime_class_exists=True)
    if isinstance(planned, Rejection):
        assert refusal == f"{planned.message} (reason {planned.reason})"
    else:
        assert refusal is None
    without_class = plan_execution(spec, runtimes, config, runtime_class_exists=False)
    if isinstance(planned, Rejection):
        assert without_class == planned
    elif config.runtime_class:
        assert isinstance(without_class, Rejection) and without_class.reason == vocabulary.RUNTIME_CLASS_MISSING


@settings(FUZZ, max_examples=60)
@given(spec=specs)
def test_the_webhook_handler_answers_every_spec(spec: dict[str, Any]) -> None:
    """Safeguard: the Kopf handler behind the webhook either admits or raises kopf.AdmissionError (422)
    with the refusal; any other exception would be an HTTP 500, and the API server's answer would no
    longer say what is wrong with the spec."""
    cluster = FakeCluster()
    memo = kopf.Memo(config=OperatorConfig(), cluster=cluster)
    expected = admission.refusal(spec, {"python": PYTHON}, OperatorConfig())
    warnings: list[str] = []
    body = kopf.Spec(kopf.Body({"spec": spec}))
    if expected is None:
        codeexec.handlers.validate_execution(spec=body, memo=memo, warnings=warnings)
        assert warnings == []
        return
    with pytest.raises(kopf.AdmissionError) as refused:
        codeexec.handlers.validate_execution(spec=body, memo=memo, warnings=warnings)
    assert (str(refused.value), refused.value.code) == (expected, 422)


# --- Allowed domains: what the operator adds to planning -------------------------------------------------

# Addresses a name may resolve to: public ones, and every kind the operator must refuse.
ADDRESSES = (
    "93.184.216.34",
    "2606:2800:220:1:248:1893:25c8:1946",
    "127.0.0.1",
    "169.254.169.254",
    "10.0.0.1",
    "10.96.0.1",
    "192.168.1.1",
    "::1",
    "fe80::1",
    "::ffff:10.0.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "fd00::1",
)


def fake_resolution(host: str) -> Resolution:
    """Deterministic per name: none, or one to three addresses picked by the name's hash."""
    digest = hashlib.sha256(host.encode()).digest()
    if digest[0] % 5 == 0:
        return Resolution(error="Name or service not known")
    return Resolution(addresses=tuple(ADDRESSES[byte % len(ADDRESSES)] for byte in digest[1 : 2 + digest[0] % 3]))


def operator_decision(spec: Mapping[str, Any], config: OperatorConfig) -> lifecycle.Admitted | Rejection:
    """The operator's whole decision (lifecycle._admit) with the fake resolver and the fake cluster's networks."""
    plan = plan_execution(spec, {"python": PYTHON}, config, runtime_class_exists=True)
    with mock.patch.object(resolver, "resolve_host", fake_resolution):
        return lifecycle.pin_allowed_domains(FakeCluster().facts, config, plan)


@FUZZ
@given(
    domain_list=st.lists(domains, max_size=4),
    allowed_private=st.sampled_from([(), ("10.0.0.0/8",), ("192.168.0.0/16", "fd00::/8")]),
)
def test_allowed_domains_are_pinned_to_reachable_addresses_or_rejected(
    domain_list: list[str], allowed_private: tuple[str, ...]
) -> None:
    """Safeguard: every allowed domain the operator accepts is pinned only to addresses that pass the
    egress checks (no loopback, link-local, cluster or unallowed private address); anything else is
    rejected with DomainNotAllowed, DomainUnresolvable, or InvalidSpec for a malformed entry."""
    config = OperatorConfig(allowed_private_cidrs=allowed_private)
    outcome = operator_decision({"language": "python", "code": "x", "network": {"allowedDomains": domain_list}}, config)
    if isinstance(outcome, Rejection):
        assert_stable(outcome)
        return
    _, pinned = outcome
    assert [host.hostname for host in pinned] == [entry.partition(":")[0] for entry in domain_list]
    private = [ipaddress.ip_network(cidr) for cidr in allowed_private]
    for host in pinned:
        assert host.addresses
        for address in map(ipaddress.ip_address, host.addresses):
            assert not (address.is_loopback or address.is_link_local or address.is_multicast or address.is_unspecified)
            assert address.is_global or any(address in network for network in private), address
            assert address != ipaddress.ip_address("10.0.0.1")  # the fake cluster's API Service
