"""Which addresses an allowed domain may be pinned to, the cluster's own networks, and the isolation probe."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from codeexec import egress, vocabulary
from codeexec.egress import PinnedHost
from codeexec.resolver import Resolution
from codeexec.validation import Rejection

NODE = {
    "metadata": {"name": "node-a"},
    "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"]},
    "status": {
        "addresses": [
            {"type": "InternalIP", "address": "192.0.2.2"},
            {"type": "ExternalIP", "address": "203.0.114.7"},
            {"type": "Hostname", "address": "node-a"},
            {"type": "InternalDNS", "address": "node-a.internal"},
        ]
    },
}
API_SERVICE = {"spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"name": "https", "port": 443}]}}
API_SLICES = [{"endpoints": [{"addresses": ["198.51.99.10"]}, {"addresses": ["2001:4860:1::10"]}]}]
CLUSTER = egress.cluster_networks(["10.0.0.0/24", "10.244.0.0/16"], [NODE], API_SERVICE, API_SLICES, service_cidrs=[])


def reason(address: str, allowed_private: tuple[str, ...] = ()) -> str | None:
    return egress.forbidden_reason(address, CLUSTER, allowed_private)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:2800:220:1::1", "1.1.1.1", "2a00:1450::1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert reason(address) is None


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("::1", "a loopback address"),
        ("169.254.169.254", "a link-local address (where cloud metadata services answer)"),
        ("169.254.0.1", "a link-local address (where cloud metadata services answer)"),
        ("fe80::1", "a link-local address"),
        ("febf::1", "a link-local address"),
        ("0.0.0.0", "an unspecified (this-network) address"),
        ("0.1.2.3", "an unspecified (this-network) address"),
        ("::", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("239.255.255.250", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
        ("255.255.255.255", "a reserved address"),
        ("192.0.2.10", "a documentation address"),
        ("2001:db8::1", "a documentation address"),
        ("198.18.0.1", "a benchmarking address"),
        # IPv6 spellings of IPv4 addresses could lead anywhere, e.g. to the metadata service.
        ("::ffff:169.254.169.254", "an IPv4-mapped address"),
        ("::ffff:93.184.216.34", "an IPv4-mapped address"),
        ("::169.254.169.254", "a reserved address"),
        ("64:ff9b::a9fe:a9fe", "a NAT64 address"),
        ("2002:a9fe:a9fe::1", "a 6to4 address"),
        ("2001:0:4136:e378::1", "an IETF protocol address"),  # Teredo
        ("fec0::1", "a site-local address"),
    ],
)
def test_special_addresses_are_never_allowed(address: str, why: str) -> None:
    assert reason(address) == why
    # Not even when the operator opens every private range.
    assert reason(address, ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")) == why


@pytest.mark.parametrize(
    "address", ["10.1.2.3", "172.16.0.1", "172.31.255.254", "192.168.1.1", "100.64.0.1", "100.127.255.254", "fd00::1"]
)
def test_private_addresses_need_the_operators_consent(address: str) -> None:
    assert reason(address) == "a private address outside the operator's allowed private ranges"


def test_allowed_private_cidrs_open_exactly_their_range() -> None:
    allowed = ("10.250.0.0/16", "fd12::/64")
    assert reason("10.250.3.2", allowed) is None
    assert reason("fd12::5", allowed) is None
    assert reason("10.251.0.1", allowed) == "a private address outside the operator's allowed private ranges"
    assert reason("fd13::5", allowed) == "a private address outside the operator's allowed private ranges"
    assert reason("172.16.0.1", allowed) == "a private address outside the operator's allowed private ranges"


def test_cluster_ranges_win_over_allowed_private_cidrs() -> None:
    everything = ("10.0.0.0/8",)
    assert reason("10.0.0.1", everything) == "an address in the cluster range 10.0.0.0/24"
    assert reason("10.0.0.200", everything) == "an address in the cluster range 10.0.0.0/24"
    assert reason("10.244.7.9", everything) == "an address in the cluster range 10.244.0.0/16"
    assert reason("10.245.0.1", everything) is None


def test_node_and_api_server_addresses_are_never_allowed_even_when_public() -> None:
    assert reason("203.0.114.7") == "an address of node node-a"
    assert reason("198.51.99.10") == "an address of the Kubernetes API server"
    assert reason("2001:4860:1::10") == "an address of the Kubernetes API server"
    assert reason("203.0.114.8") is None


def test_cluster_networks_from_settings_and_api_objects() -> None:
    expected = (
        (ipaddress.ip_network("10.0.0.0/24"), "an address in the cluster range 10.0.0.0/24"),
        (ipaddress.ip_network("10.244.0.0/16"), "an address in the cluster range 10.244.0.0/16"),
        (ipaddress.ip_network("192.0.2.2/32"), "an address of node node-a"),
        (ipaddress.ip_network("203.0.114.7/32"), "an address of node node-a"),
        (ipaddress.ip_network("10.244.0.0/24"), "an address in the pod range 10.244.0.0/24 of node node-a"),
        (ipaddress.ip_network("fd00:10:244::/64"), "an address in the pod range fd00:10:244::/64 of node node-a"),
        (ipaddress.ip_network("10.0.0.1/32"), "the address of the Kubernetes API service"),
        (ipaddress.ip_network("198.51.99.10/32"), "an address of the Kubernetes API server"),
        (ipaddress.ip_network("2001:4860:1::10/128"), "an address of the Kubernetes API server"),
    )
    assert expected == CLUSTER


def test_cluster_networks_tolerate_sparse_objects() -> None:
    old_node = {"metadata": {"name": "old"}, "spec": {"podCIDR": "10.244.1.0/24"}, "status": {}}
    bare: dict[str, Any] = {}
    headless = {"spec": {"clusterIP": "None"}}
    networks = egress.cluster_networks([], [old_node, bare], headless, [{"endpoints": None}, {}], service_cidrs=[{}])
    assert networks == (
        (ipaddress.ip_network("10.244.1.0/24"), "an address in the pod range 10.244.1.0/24 of node old"),
    )
    assert egress.cluster_networks([], [], None, [], service_cidrs=[]) == ()


def test_service_ranges_come_from_the_service_cidr_objects() -> None:
    """The service ranges are read from the API (ServiceCIDR, Kubernetes 1.33+), after the configured ones."""
    service_cidrs = [
        {"metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16", "fd00:10:96::/108"]}},
        {"metadata": {"name": "extra"}, "spec": {"cidrs": ["10.97.0.0/24"]}},
    ]
    networks = egress.cluster_networks(["10.244.0.0/16"], [], None, [], service_cidrs=service_cidrs)
    assert networks == tuple(
        (ipaddress.ip_network(cidr), f"an address in the cluster range {cidr}")
        for cidr in ("10.244.0.0/16", "10.96.0.0/16", "fd00:10:96::/108", "10.97.0.0/24")
    )


def test_isolation_probe_is_the_api_service() -> None:
    assert egress.isolation_probe(API_SERVICE) == "10.0.0.1:443"
    ipv6 = {"spec": {"clusterIP": "fd00::1", "ports": [{"port": 443}]}}
    assert egress.isolation_probe(ipv6) == "[fd00::1]:443"
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        egress.isolation_probe({"spec": {"clusterIP": "None", "ports": [{"port": 443}]}})
    with pytest.raises(ValueError, match="no port"):
        egress.isolation_probe({"spec": {"clusterIP": "10.0.0.1", "ports": []}})


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [("example.com", ("example.com", None)), ("api.example.com:8443", ("api.example.com", 8443))],
)
def test_parse_domain(entry: str, parsed: tuple[str, int | None]) -> None:
    assert egress.parse_domain(entry) == parsed


def pin(domains: list[str], resolved: dict[str, Resolution], allowed_private: tuple[str, ...] = ()) -> Any:
    return egress.pin_domains(domains, resolved, CLUSTER, allowed_private)


def test_pin_domains_keeps_ports_and_sorts_addresses() -> None:
    resolved = {
        "api.example.com": Resolution(("93.184.216.35", "2606:2800:220:1::1", "93.184.216.34", "93.184.216.35")),
        "internal.example.com": Resolution(("10.250.1.2",)),
    }
    pinned = pin(["api.example.com:8443", "internal.example.com", "api.example.com"], resolved, ("10.250.0.0/16",))
    assert pinned == (
        PinnedHost("api.example.com", 8443, ("93.184.216.34", "93.184.216.35", "2606:2800:220:1::1")),
        PinnedHost("internal.example.com", None, ("10.250.1.2",)),
        PinnedHost("api.example.com", None, ("93.184.216.34", "93.184.216.35", "2606:2800:220:1::1")),
    )
    assert egress.pinned_addresses(pinned) == ["10.250.1.2", "93.184.216.34", "93.184.216.35", "2606:2800:220:1::1"]


def test_no_domains_pin_nothing() -> None:
    assert pin([], {}) == ()
    assert egress.pinned_addresses(()) == []


def test_unresolvable_domain_is_rejected_naming_it() -> None:
    result = pin(
        ["ok.example.com", "nope.example.com:8080"],
        {
            "ok.example.com": Resolution(("93.184.216.34",)),
            "nope.example.com": Resolution(error="Name or service not known"),
        },
    )
    assert result == Rejection(
        vocabulary.DOMAIN_UNRESOLVABLE,
        'spec.network.allowedDomains[1] "nope.example.com:8080": the name nope.example.com does not resolve '
        "(Name or service not known)",
    )
    assert pin(["x.example.com"], {"x.example.com": Resolution()}).reason == vocabulary.DOMAIN_UNRESOLVABLE
    assert pin(["y.example.com"], {}).reason == vocabulary.DOMAIN_UNRESOLVABLE


def test_domain_resolving_to_a_forbidden_address_is_rejected_naming_both() -> None:
    result = pin(["metadata.example.com"], {"metadata.example.com": Resolution(("169.254.169.254",))})
    assert result == Rejection(
        vocabulary.DOMAIN_NOT_ALLOWED,
        'spec.network.allowedDomains[0] "metadata.example.com": the name metadata.example.com resolves to '
        "169.254.169.254, a link-local address (where cloud metadata services answer); "
        "sandboxes may never connect there",
    )


def test_one_forbidden_address_rejects_the_whole_name() -> None:
    # DNS rebinding: a public address next to an internal one must not smuggle the internal one in,
    # nor be quietly dropped (the user would not know why connections fail).
    resolved = {"rebind.example.com": Resolution(("93.184.216.34", "10.0.0.1"))}
    result = pin(["rebind.example.com"], resolved, ("10.0.0.0/8",))
    assert isinstance(result, Rejection)
    assert result.reason == vocabulary.DOMAIN_NOT_ALLOWED
    assert "resolves to 10.0.0.1, an address in the cluster range 10.0.0.0/24" in result.message


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("192.0.2.2", "an address of node node-a"),
        ("10.0.0.1", "an address in the cluster range 10.0.0.0/24"),
        ("10.244.0.17", "an address in the cluster range 10.244.0.0/16"),
        ("10.9.9.9", "a private address outside the operator's allowed private ranges"),
        ("127.0.0.1", "a loopback address"),
    ],
)
def test_rejection_says_why(address: str, why: str) -> None:
    result = pin(["bad.example.com"], {"bad.example.com": Resolution((address,))})
    assert isinstance(result, Rejection)
    assert result.message.endswith(f"resolves to {address}, {why}; sandboxes may never connect there")
