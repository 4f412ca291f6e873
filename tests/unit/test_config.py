"""Operator settings from CODEEXEC_* variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from codeexec.config import OperatorConfig, variable_name


def test_defaults() -> None:
    config = OperatorConfig.from_env({})
    assert config.runtime_class == "gvisor"
    assert config.keep_pods is False
    assert config.max_output_bytes == 65536
    assert config.start_deadline_seconds == 120
    assert config.max_timeout_seconds == 600
    assert (config.max_cpu, config.max_memory) == ("2", "1Gi")
    assert (config.default_cpu, config.default_memory) == ("500m", "256Mi")
    assert (config.tmp_size, config.ephemeral_storage) == ("64Mi", "128Mi")
    assert config.image_pull_policy == "IfNotPresent"
    assert config.active_deadline_grace_seconds == 30
    assert config.allowed_private_cidrs == ()
    assert config.namespaces == ()


def test_every_setting_has_a_variable_and_a_description() -> None:
    for name, field in OperatorConfig.model_fields.items():
        assert variable_name(name) == "CODEEXEC_" + name.upper()
        assert field.description, name


def test_values_from_the_environment() -> None:
    config = OperatorConfig.from_env(
        {
            "CODEEXEC_RUNTIME_CLASS": "",
            "CODEEXEC_KEEP_PODS": "true",
            "CODEEXEC_MAX_OUTPUT_BYTES": "2048",
            "CODEEXEC_MAX_MEMORY": "2Gi",
            "CODEEXEC_NAMESPACES": "team-a, team-b,,",
            "CODEEXEC_ALLOWED_PRIVATE_CIDRS": "10.1.0.0/16",
            "KUBERNETES_SERVICE_HOST": "10.0.0.1",
            "CODEEXEC_SERVICE_PORT": "443",  # a Service named codeexec injects these; ignored
        }
    )
    assert config.runtime_class == ""
    assert config.keep_pods is True
    assert config.max_output_bytes == 2048
    assert config.max_memory == "2Gi"
    assert config.namespaces == ("team-a", "team-b")
    assert config.allowed_private_cidrs == ("10.1.0.0/16",)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CODEEXEC_KEEP_PODS", "maybe"),
        ("CODEEXEC_MAX_OUTPUT_BYTES", "lots"),
        ("CODEEXEC_MAX_OUTPUT_BYTES", "10"),
        ("CODEEXEC_MAX_CPU", "two"),
        ("CODEEXEC_MAX_MEMORY", "1TB"),
        ("CODEEXEC_IMAGE_PULL_POLICY", "Sometimes"),
        ("CODEEXEC_MAX_TIMEOUT_SECONDS", "0"),
    ],
)
def test_bad_values_stop_the_operator(variable: str, value: str) -> None:
    with pytest.raises(ValidationError):
        OperatorConfig.from_env({variable: value})


def test_config_is_frozen() -> None:
    config = OperatorConfig()
    with pytest.raises(ValidationError):
        config.keep_pods = True  # type: ignore[misc]


def test_network_ranges() -> None:
    defaults = OperatorConfig.from_env({})
    assert defaults.cluster_cidrs == ()  # the service and node pod ranges are read from the API, no guess
    config = OperatorConfig.from_env(
        {"CODEEXEC_CLUSTER_CIDRS": "10.96.0.0/12, fd00:10:96::/108", "CODEEXEC_ALLOWED_PRIVATE_CIDRS": "10.250.0.0/16"}
    )
    assert config.cluster_cidrs == ("10.96.0.0/12", "fd00:10:96::/108")
    assert config.allowed_private_cidrs == ("10.250.0.0/16",)


@pytest.mark.parametrize("cidr", ["10.0.0.1/8", "10.0.0.0/33", "not-a-network", "10.0.0.0/8,,nope"])
@pytest.mark.parametrize("variable", ["CODEEXEC_CLUSTER_CIDRS", "CODEEXEC_ALLOWED_PRIVATE_CIDRS"])
def test_bad_network_ranges_stop_the_operator(variable: str, cidr: str) -> None:
    with pytest.raises(ValidationError):
        OperatorConfig.from_env({variable: cidr})
