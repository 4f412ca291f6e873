"""The lifecycle's wiring of allowed domains: resolver → cluster facts → egress decision (API and DNS stubbed)."""

from __future__ import annotations

from typing import Any

import pytest

from codeexec import lifecycle, resolver, vocabulary
from codeexec.config import OperatorConfig
from codeexec.egress import PinnedHost
from codeexec.resolver import Resolution
from codeexec.validation import Rejection
from tests.unit.factories import plan
from tests.unit.fakes import FakeCluster, FakeClusterFacts

NODE = {"metadata": {"name": "node-a"}, "status": {"addresses": [{"type": "ExternalIP", "address": "93.184.216.99"}]}}


def cluster_facts() -> FakeClusterFacts:
    """A node, the API server's endpoint and a service range, all of which pinning must refuse."""
    facts = FakeCluster().facts
    facts.nodes = [NODE]
    facts.api_endpoint_slices = [{"endpoints": [{"addresses": ["93.184.216.98"]}]}]
    facts.service_cidr_objects = [{"spec": {"cidrs": ["10.0.0.0/24"]}}]
    return facts


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> dict[str, Resolution]:
    table: dict[str, Resolution] = {}
    monkeypatch.setattr(resolver, "resolve_all", lambda hosts: {host: table.get(host, Resolution()) for host in hosts})
    return table


def pin(facts: FakeClusterFacts, config: OperatorConfig | None = None, **fields: Any) -> Any:
    config = config or OperatorConfig()
    return lifecycle.pin_allowed_domains(facts, config, plan(config, **fields))


def test_no_domains_need_no_lookup_and_no_api_reads(answers: dict[str, Resolution]) -> None:
    facts = cluster_facts()
    result = pin(facts)
    assert not isinstance(result, Rejection)
    assert result[1] == ()
    assert facts.network_reads == 0


def test_allowed_domains_are_pinned(answers: dict[str, Resolution]) -> None:
    answers["api.example.com"] = Resolution(("93.184.216.34",))
    answers["lan.example.com"] = Resolution(("10.250.1.2",))
    config = OperatorConfig(allowed_private_cidrs=("10.250.0.0/16",))
    result = pin(cluster_facts(), config, network={"allowedDomains": ["api.example.com:8443", "lan.example.com"]})
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
    result = pin(cluster_facts(), network={"allowedDomains": ["evil.example.com"]})
    assert isinstance(result, Rejection)
    assert result.reason == vocabulary.DOMAIN_NOT_ALLOWED
    assert f"resolves to {address}, {why}" in result.message


def test_unresolvable_and_earlier_rejections_pass_through(answers: dict[str, Resolution]) -> None:
    result = pin(cluster_facts(), network={"allowedDomains": ["gone.example.com"]})
    assert isinstance(result, Rejection) and result.reason == vocabulary.DOMAIN_UNRESOLVABLE
    earlier = Rejection(vocabulary.UNKNOWN_LANGUAGE, "no")
    assert lifecycle.pin_allowed_domains(cluster_facts(), OperatorConfig(), earlier) is earlier
