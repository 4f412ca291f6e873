"""Kopf's bookkeeping on Executions, sized so it always fits next to a large spec."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, cast

import kopf


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Kopf's last-handled-configuration annotation holding a digest of the essence instead of a copy.

    Kopf copies the whole spec (and the user's labels and annotations) into this annotation. A valid
    spec can hold 100 KiB of code, 256 KiB of stdin and 128 KiB of input, and the API server limits
    all annotations together to 256 KiB: the copy then fails with 422, Kopf throttles and retries
    forever, and its finalizer (needed by the timer) never lands. The operator has no update handlers
    (the spec is immutable), so Kopf only needs to tell "handled" from "changed since": a digest does.
    """

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        essence = super().build(body=body, extra_fields=extra_fields)
        return cast(kopf.BodyEssence, {"sha256": essence_digest(essence)})


def essence_digest(essence: Any) -> str:
    """Stable for equal essences whatever their key order."""
    canonical = json.dumps(essence, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode(errors="surrogatepass")).hexdigest()
