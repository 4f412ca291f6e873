"""The handler's wiring of allowed domains: resolver → cluster facts → egress decision (API and DNS stubbed)."""

from __future__ import annotations

from typing import Any

import pytest

from codeexec import handlers, resolver, status
from codeexec.builders import PinnedHost
from codeexec.config import OperatorConfig
from codeexec.egress import Resolution
from codeexec.validation import Rejection
from tests.unit.factories import plan

NODE = {"metadata": {"name": "node-a"}, "status": {"addresses": [{"type": "ExternalIP", "address": "93.184.216.99"}]}}


class StubCluster:
    """The reads the pinning needs; counts the network objects read."""

    def __init__(self) -> None:
        self.reads = 0

    def api_service(self) -> dict[str, Any]:
        return {"spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 443}]}}

    def network_objects(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        self.reads += 1
        return [NODE], [{"endpoints": [{"addresses": ["93.184.216.98"]}]}]

    def service_cidrs(self) -> list[dict[str, Any]]:
        return [{"spec": {"cidrs": ["10.0.0.0/24"]}}]


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, Resolution]:
    table: dict[str, Resolution] = {}
    monkeypatch.setattr(resolver, "resolve_all", lambda hosts: {host: table.get(host, Resolution()) for host in hosts})
    return table


def pin(cluster: StubCluster, config: OperatorConfig | None = None, **fields: Any) -> Any:
    config = config or OperatorConfig()
    return handlers._pin_allowed_domains(cluster, config, plan(config, **fields))  # type: ignore[arg-type]


def test_no_domains_need_no_lookup_and_no_api_reads(answers: dict[str, Resolution]) -> None:
    cluster = StubCluster()
    result = pin(cluster)
    assert not isinstance(result, Rejection)
    assert result[1] == ()
    assert cluster.reads == 0


def test_allowed_domains_are_pinned(answers: dict[str, Resolution]) -> None:
    answers["api.example.com"] = Resolution(("93.184.216.34",))
    answers["lan.example.com"] = Resolution(("10.250.1.2",))
    config = OperatorConfig(allowed_private_cidrs=("10.250.0.0/16",))
    result = pin(StubCluster(), config, network={"allowedDomains": ["api.example.com:8443", "lan.example.com"]})
    assert not isinstance(result, Rejection)
    assert result[1] == (
        PinnedHost("api.example.com", 8443, ("93.184.216.34",)),
        PinnedHost("lan.example.com", None, ("10.250.1.2",)),
    )


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("93.184.216.99", "an address of node node-a"),
        ("93.184.216.98", "an address of the Kubernetes API server"),
        ("10.0.0.1", "an address in the cluster range 10.0.0.0/24"),
        ("10.250.1.2", "a private address outside the operator's allowed private ranges"),
    ],
)
def test_cluster_facts_and_settings_reach_the_decision(answers: dict[str, Resolution], address: str, why: str) -> None:
    answers["evil.example.com"] = Resolution((address,))
    result = pin(StubCluster(), network={"allowedDomains": ["evil.example.com"]})
    assert isinstance(result, Rejection)
    assert result.reason == status.DOMAIN_NOT_ALLOWED
    assert f"resolves to {address}, {why}" in result.message


def test_unresolvable_and_earlier_rejections_pass_through(answers: dict[str, Resolution]) -> None:
    result = pin(StubCluster(), network={"allowedDomains": ["gone.example.com"]})
    assert isinstance(result, Rejection) and result.reason == status.DOMAIN_UNRESOLVABLE
    earlier = Rejection(status.UNKNOWN_LANGUAGE, "no")
    assert handlers._pin_allowed_domains(StubCluster(), OperatorConfig(), earlier) is earlier  # type: ignore[arg-type]
