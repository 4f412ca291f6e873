"""Resolves allowed domains with the system resolver: the operator's only DNS lookups."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

MAX_PARALLEL_LOOKUPS = 8
# RFC 6761: names under .invalid never resolve; answering that here sends no query anywhere.
NEVER_RESOLVES = ".invalid"


@dataclass(frozen=True)
class Resolution:
    """What the resolver found for one host name: its addresses, or why there are none."""

    addresses: tuple[str, ...] = ()
    error: str | None = None


def resolve_host(host: str) -> Resolution:
    """Every IPv4 and IPv6 address of `host` (as getaddrinfo orders them), or why there are none."""
    if host.endswith(NEVER_RESOLVES):
        return Resolution(error=f"names under {NEVER_RESOLVES} never resolve")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        return Resolution(error=getattr(error, "strerror", None) or str(error))
    addresses = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            # Drops an IPv6 scope ("fe80::1%eth0"): such an address is refused as link-local anyway.
            addresses.append(str(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])))
    return Resolution(addresses=tuple(dict.fromkeys(addresses)))


def resolve_all(hosts: Iterable[str]) -> dict[str, Resolution]:
    """Each distinct host name → its Resolution, looked up in parallel (getaddrinfo blocks)."""
    unique = list(dict.fromkeys(hosts))
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_LOOKUPS, len(unique))) as pool:
        return dict(zip(unique, pool.map(resolve_host, unique), strict=True))
