"""Decides, without I/O, where a sandbox may connect: allowed domains pinned to addresses that pass every check."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from codeexec.resolver import Resolution
from codeexec.validation import Rejection
from codeexec.vocabulary import DOMAIN_NOT_ALLOWED, DOMAIN_UNRESOLVABLE

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A network no sandbox may reach, and what it is (for the user's message).
Forbidden = tuple[IPNetwork, str]

# Never allowed, whatever the operator's settings (RFC 6890 special-purpose ranges and friends).
# Explicit rather than ipaddress.is_global, whose lists change between Python releases.
SPECIAL_NETWORKS: tuple[Forbidden, ...] = tuple(
    (ipaddress.ip_network(cidr), what)
    for cidr, what in (
        ("0.0.0.0/8", "an unspecified (this-network) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address (where cloud metadata services answer)"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        # Mapped, compatible, NAT64, 6to4 and Teredo addresses can lead to any IPv4 address.
        ("::ffff:0:0/96", "an IPv4-mapped address"),
        ("64:ff9b::/96", "a NAT64 address"),
        ("64:ff9b:1::/48", "a NAT64 address"),
        ("::/8", "a reserved address"),  # after the ranges above, which it contains
        ("100::/64", "a discard-only address"),
        ("2001::/23", "an IETF protocol address"),
        ("2001:db8::/32", "a documentation address"),
        ("2002::/16", "a 6to4 address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
)
# Allowed only inside the operator's allowed_private_cidrs.
PRIVATE_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
NODE_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})


@dataclass(frozen=True)
class PinnedHost:
    """An allowed domain resolved by the operator: pinned in /etc/hosts, allowed by IP."""

    hostname: str
    port: int | None  # None: DEFAULT_DOMAIN_PORTS
    addresses: tuple[str, ...]


def parse_domain(entry: str) -> tuple[str, int | None]:
    """An allowedDomains entry ("api.example.com:8443") → host name and port (None: the default ports)."""
    host, _, port = entry.partition(":")
    return host, int(port) if port else None


def cluster_networks(
    cluster_cidrs: Iterable[str],
    nodes: Iterable[Mapping[str, Any]],
    api_service: Mapping[str, Any] | None,
    api_endpoint_slices: Iterable[Mapping[str, Any]],
    *,
    service_cidrs: Iterable[Mapping[str, Any]],
) -> tuple[Forbidden, ...]:
    """The cluster's own networks from the operator's settings and the API objects: the configured
    ranges, the service ranges (ServiceCIDR objects), every node's addresses and pod CIDRs, the API
    server's Service and endpoint addresses."""
    ranges = [*cluster_cidrs, *(cidr for item in service_cidrs for cidr in item.get("spec", {}).get("cidrs") or [])]
    found: list[tuple[str, str]] = [(cidr, f"an address in the cluster range {cidr}") for cidr in ranges]
    for node in nodes:
        name = node.get("metadata", {}).get("name", "?")
        for address in node.get("status", {}).get("addresses") or []:
            if address.get("type") in NODE_ADDRESS_TYPES:
                found.append((address.get("address", ""), f"an address of node {name}"))
        spec = node.get("spec", {})
        for cidr in spec.get("podCIDRs") or [spec.get("podCIDR")]:
            if cidr:
                found.append((cidr, f"an address in the pod range {cidr} of node {name}"))
    if api_service is not None:
        service = api_service.get("spec", {})
        for address in service.get("clusterIPs") or [service.get("clusterIP")]:
            found.append((address or "", "the address of the Kubernetes API service"))
    for endpoint_slice in api_endpoint_slices:
        for endpoint in endpoint_slice.get("endpoints") or []:
            for address in endpoint.get("addresses") or []:
                found.append((address, "an address of the Kubernetes API server"))
    networks = []
    for cidr, what in found:
        try:
            networks.append((ipaddress.ip_network(cidr, strict=False), what))
        except ValueError:
            continue  # "None" for a headless service, or junk in an object: nothing to forbid
    return tuple(networks)


def isolation_probe(api_service: Mapping[str, Any]) -> str:
    """HOST:PORT of the `kubernetes` Service, which no sandbox may reach: the runner waits until it
    cannot, proof that the pod's NetworkPolicy is enforced."""
    spec = api_service.get("spec", {})
    address = ipaddress.ip_address(spec.get("clusterIP", ""))
    ports = spec.get("ports") or []
    if not ports:
        raise ValueError("the kubernetes Service has no port")
    port = int(ports[0]["port"])
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def forbidden_reason(address: str, cluster: Sequence[Forbidden], allowed_private_cidrs: Sequence[str]) -> str | None:
    """Why no sandbox may connect to `address` (e.g. "a link-local address"); None when it may."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    # The cluster's own networks first: "an address of node x" tells more than "a documentation address".
    for network, what in (*cluster, *SPECIAL_NETWORKS):
        if ip.version == network.version and ip in network:
            return what
    if any(ip.version == network.version and ip in network for network in PRIVATE_NETWORKS):
        allowed = (ipaddress.ip_network(cidr) for cidr in allowed_private_cidrs)
        if not any(ip.version == network.version and ip in network for network in allowed):
            return "a private address outside the operator's allowed private ranges"
    return None


def pin_domains(
    domains: Sequence[str],
    resolved: Mapping[str, Resolution],
    cluster: Sequence[Forbidden],
    allowed_private_cidrs: Sequence[str],
) -> tuple[PinnedHost, ...] | Rejection:
    """Each allowed domain with the addresses it resolved to, or a Rejection naming the first domain
    that did not resolve or resolved to any address a sandbox may not reach (DNS rebinding: one bad
    address rejects the whole name rather than quietly leaving it out)."""
    pinned = []
    for index, entry in enumerate(domains):
        host, port = parse_domain(entry)
        field = f'spec.network.allowedDomains[{index}] "{entry}"'
        found = resolved.get(host, Resolution(error="not looked up"))
        if not found.addresses:
            detail = f" ({found.error})" if found.error else ""
            return Rejection(DOMAIN_UNRESOLVABLE, f"{field}: the name {host} does not resolve{detail}")
        for address in found.addresses:
            why = forbidden_reason(address, cluster, allowed_private_cidrs)
            if why is not None:
                return Rejection(
                    DOMAIN_NOT_ALLOWED,
                    f"{field}: the name {host} resolves to {address}, {why}; sandboxes may never connect there",
                )
        addresses = sorted({ipaddress.ip_address(address) for address in found.addresses}, key=_address_order)
        pinned.append(PinnedHost(host, port, tuple(str(address) for address in addresses)))
    return tuple(pinned)


def pinned_addresses(pinned: Iterable[PinnedHost]) -> list[str]:
    """Every pinned address once, IPv4 first (status.resolvedAddresses)."""
    addresses = {ipaddress.ip_address(address) for host in pinned for address in host.addresses}
    return [str(address) for address in sorted(addresses, key=_address_order)]


def _address_order(address: Address) -> tuple[int, int]:
    return address.version, int(address)
