"""Per-Execution binding tokens: minted by the operator, checked by the broker, both from one shared key."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

# Below this the key is guessable; the chart makes 48 random bytes.
MIN_KEY_BYTES = 32


class TokenKeyError(ValueError):
    """The token key file is missing, unreadable or too short."""


def read_key(path: str | Path) -> bytes:
    """The shared HMAC key: the file's bytes, surrounding whitespace removed."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as e:
        raise TokenKeyError(f"cannot read the binding token key {path}: {e}") from e
    if len(key) < MIN_KEY_BYTES:
        raise TokenKeyError(f"the binding token key {path} has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed")
    return key


def mint(key: bytes, namespace: str, name: str, uid: str) -> str:
    """The token of one Execution. Derived, not stored: the same Execution always gets the same token (an operator
    restart mid-launch cannot split the token in its Secret from the one the broker expects), and the uid makes
    a re-created Execution of the same name a different holder."""
    message = f"codeexec-binding-token/v1\n{namespace}\n{name}\n{uid}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def matches(key: bytes, token: str, namespace: str, name: str, uid: str) -> bool:
    """Whether `token` is that Execution's token (constant-time comparison)."""
    return hmac.compare_digest(token.encode(), mint(key, namespace, name, uid).encode())
