"""The admission webhook: which new Executions are refused and why, the handler's wiring in Kopf,
and its server settings (the TLS files the chart mounts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest

import codeexec.handlers
from codeexec import admission
from codeexec.api import ApiError
from codeexec.config import OperatorConfig
from tests.unit.factories import RUNTIMES, spec
from tests.unit.fakes import FakeCluster

CONFIG = OperatorConfig()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"language": "cobol"},
            'spec.language "cobol" is not an installed Runtime or alias (installed: javascript, python)'
            " (reason UnknownLanguage)",
        ),
        (
            {"timeoutSeconds": 3000},
            "spec.timeoutSeconds 3000 exceeds the maximum 600 for runtime python (reason TimeoutTooLong)",
        ),
        (
            {"resources": {"memory": "64Gi"}},
            "spec.resources.memory 64Gi exceeds the maximum 1Gi for runtime python (reason ResourcesTooLarge)",
        ),
        ({"code": "x" * (100 * 1024 + 1)}, "spec.code is 102401 bytes; the maximum is 102400 (reason CodeTooLarge)"),
        ({"env": [{"name": "A"}, {"name": "A"}]}, "spec.env: Value error, duplicate names: A (reason InvalidSpec)"),
    ],
)
def test_refuses_what_the_operator_would_reject(fields: dict[str, Any], expected: str) -> None:
    assert admission.refusal(spec(**fields), RUNTIMES, CONFIG) == expected


@pytest.mark.parametrize("language", ["python", "py", "javascript", "js"])
def test_admits_valid_executions(language: str) -> None:
    assert admission.refusal(spec(language=language, timeoutSeconds=600), RUNTIMES, CONFIG) is None


def test_a_missing_runtime_class_is_not_the_specs_fault() -> None:
    # The operator fails such Executions (phase Failed, RuntimeClassMissing); admission lets them in.
    assert admission.refusal(spec(), RUNTIMES, OperatorConfig(runtime_class="no-such-class")) is None


def test_bindings_are_left_to_the_operator_but_their_names_are_checked() -> None:
    """A SandboxBinding is the namespace's state, made maybe in the same apply: the operator looks when it admits
    (Rejected, BindingNotFound or BindingsUnavailable, visible in the history); a malformed name is the spec's."""
    assert admission.refusal(spec(bindings=["not-there"]), RUNTIMES, CONFIG) is None
    refusal = admission.refusal(spec(bindings=["Not_A_Name"]), RUNTIMES, CONFIG)
    assert refusal is not None and refusal.startswith("spec.bindings[0]: ") and "(reason InvalidSpec)" in refusal


def test_operator_limits_apply() -> None:
    config = OperatorConfig(max_timeout_seconds=60)
    refusal = admission.refusal(spec(timeoutSeconds=61), RUNTIMES, config)
    assert refusal is not None and "spec.timeoutSeconds 61 exceeds the maximum 60" in refusal


PYTHON_OBJECT = {
    "metadata": {"name": "python"},
    "spec": {"image": "python:1", "command": ["python3"], "fileName": "main.py"},
}


def validate(spec_: dict[str, Any], cluster: FakeCluster) -> list[str]:
    warnings: list[str] = []
    memo = kopf.Memo(config=CONFIG, cluster=cluster)
    codeexec.handlers.validate_execution(spec=kopf.Spec(kopf.Body({"spec": spec_})), memo=memo, warnings=warnings)
    return warnings


def test_handler_refuses_with_the_reason() -> None:
    with pytest.raises(kopf.AdmissionError) as refused:
        validate(spec(language="ruby"), FakeCluster(runtimes=[PYTHON_OBJECT]))
    assert str(refused.value) == (
        'spec.language "ruby" is not an installed Runtime or alias (installed: python) (reason UnknownLanguage)'
    )
    assert refused.value.code == 422


def test_handler_admits_a_valid_execution() -> None:
    assert validate(spec(), FakeCluster(runtimes=[PYTHON_OBJECT])) == []


def test_handler_admits_with_a_warning_when_the_runtimes_cannot_be_read() -> None:
    # The operator validates again; a flaky API server must not block every user.
    warnings = validate(spec(language="ruby"), FakeCluster(runtimes_error=ApiError("503 Service Unavailable", 503)))
    assert warnings == ["not validated against the installed Runtimes (503 Service Unavailable); the operator will"]


def test_webhook_is_registered_only_on_request_for_create_of_executions() -> None:
    assert not kopf.get_default_registry()._webhooks.get_all_handlers()  # importing registers none
    registry = kopf.OperatorRegistry()
    codeexec.handlers.register_webhook(registry)
    (handler,) = registry._webhooks.get_all_handlers()
    assert handler.id == admission.WEBHOOK_ID == "validate-execution"
    assert handler.fn is codeexec.handlers.validate_execution
    assert handler.selector is not None
    assert (handler.selector.group, handler.selector.version, handler.selector.any_name) == (
        "codeexec.io",
        "v1alpha1",
        "executions",
    )
    assert list(handler.operations or []) == ["CREATE"]
    assert handler.reason is not None and handler.reason.value == "validating"


def test_webhook_server_serves_the_mounted_certificate() -> None:
    server = admission.webhook_server(OperatorConfig(webhook_port=9443, webhook_cert_dir="/certs"))
    assert isinstance(server, kopf.WebhookServer)
    assert server.port == 9443
    assert (server.certfile, server.pkeyfile) == (Path("/certs/tls.crt"), Path("/certs/tls.key"))
    assert server.insecure is False
