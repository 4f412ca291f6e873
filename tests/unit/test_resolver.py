"""The resolver: getaddrinfo's answers (or errors) → Resolution; .invalid without any lookup."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from codeexec import resolver
from codeexec.resolver import Resolution


def fake_getaddrinfo(answers: dict[str, list[tuple[int, str]]]) -> Any:
    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(family, socket.SOCK_STREAM, 6, "", (address, 0)) for family, address in answers[host]]

    return getaddrinfo


def test_addresses_in_resolver_order_without_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        "api.example.com": [
            (socket.AF_INET6, "2606:2800:220:1:0:0:0:1"),
            (socket.AF_INET, "93.184.216.34"),
            (socket.AF_INET, "93.184.216.34"),
            (socket.AF_INET6, "fe80::1%eth0"),
        ]
    }
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo(answers))
    assert resolver.resolve_host("api.example.com") == Resolution(("2606:2800:220:1::1", "93.184.216.34", "fe80::1"))


def test_lookup_errors_become_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo({}))
    assert resolver.resolve_host("nope.example.com") == Resolution(error="Name or service not known")


def test_invalid_names_are_never_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_lookup(*_: Any, **__: Any) -> Any:
        raise AssertionError("no DNS query may be sent for .invalid")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    result = resolver.resolve_host("anything.invalid")
    assert result.addresses == () and result.error == "names under .invalid never resolve"


def test_resolve_all_looks_up_each_name_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    lookup = fake_getaddrinfo({"a.example.com": [(socket.AF_INET, "93.184.216.34")]})

    def counting(host: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(host)
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    results = resolver.resolve_all(["a.example.com", "b.example.com", "a.example.com"])
    assert results == {
        "a.example.com": Resolution(("93.184.216.34",)),
        "b.example.com": Resolution(error="Name or service not known"),
    }
    assert sorted(calls) == ["a.example.com", "b.example.com"]
    assert resolver.resolve_all([]) == {}


def test_the_system_resolver_answers_from_the_hosts_file() -> None:
    # localhost is in every /etc/hosts: a real lookup that sends no DNS query.
    assert "127.0.0.1" in resolver.resolve_host("localhost").addresses
