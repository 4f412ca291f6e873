"""Unit tests of codeexec.bindingtoken: tokens per Execution, bound to the key and to every part of the identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from codeexec import bindingtoken

KEY = b"k" * 48


def test_the_same_execution_always_gets_the_same_token() -> None:
    assert bindingtoken.mint(KEY, "ns", "ex", "uid-1") == bindingtoken.mint(KEY, "ns", "ex", "uid-1")


@pytest.mark.parametrize(
    "other",
    [("ns2", "ex", "uid-1"), ("ns", "ex2", "uid-1"), ("ns", "ex", "uid-2"), ("n", "sex", "uid-1")],
)
def test_a_token_matches_only_its_own_execution(other: tuple[str, str, str]) -> None:
    token = bindingtoken.mint(KEY, "ns", "ex", "uid-1")
    assert bindingtoken.matches(KEY, token, "ns", "ex", "uid-1")
    assert not bindingtoken.matches(KEY, token, *other)


def test_a_token_minted_with_another_key_does_not_match() -> None:
    token = bindingtoken.mint(b"x" * 48, "ns", "ex", "uid-1")
    assert not bindingtoken.matches(KEY, token, "ns", "ex", "uid-1")


def test_tokens_are_url_safe_and_carry_256_bits() -> None:
    token = bindingtoken.mint(KEY, "ns", "ex", "uid-1")
    assert len(token) == 43
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_a_short_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"short\n")
    with pytest.raises(bindingtoken.TokenKeyError, match="at least 32"):
        bindingtoken.read_key(path)


def test_a_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(bindingtoken.TokenKeyError, match="cannot read"):
        bindingtoken.read_key(tmp_path / "absent")


def test_the_key_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY + b"\n")
    assert bindingtoken.read_key(path) == KEY
