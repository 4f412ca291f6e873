"""status.bindings of each Execution: the counters of its calls, written as status.bindings alone (on that
Execution's uid only), at most once per second per Execution and once more after its calls stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from codeexec.broker.errors import BrokerError
from codeexec.broker.kube import Kube
from codeexec.models import MAX_BINDING_ERROR_LENGTH, BindingType, BindingUsage

logger = logging.getLogger(__name__)

# Executions whose counters were last touched this long ago have ended: their entries are dropped.
IDLE_SECONDS = 2 * 3600.0
# What an entry counts besides calls, errors and refused, by the binding's type.
COUNTS: dict[BindingType, tuple[str, ...]] = {"db": ("rowsRead", "rowsWritten"), "ai": ("tokens",)}


@dataclass
class _Execution:
    namespace: str
    name: str
    uid: str
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)
    touched_at: float = 0.0
    written_at: float = float("-inf")
    dirty: bool = False
    writer: asyncio.Task[None] | None = None


class UsageWriter:
    """Counts per (Execution, binding) and writes them to the Execution's status.bindings."""

    def __init__(self, kube: Kube, interval_seconds: float = 1.0) -> None:
        self._kube = kube
        self._interval = interval_seconds
        self._executions: dict[str, _Execution] = {}

    def record(
        self,
        execution: dict[str, Any],
        binding: str,
        binding_type: BindingType,
        counts: Mapping[str, int] | None = None,
        error: BrokerError | None = None,
        refused: bool = False,
    ) -> None:
        """One call's outcome; `counts`: what it adds to the type's COUNTS. The first count of a binding starts
        from what status.bindings already says (a restarted broker goes on from there)."""
        metadata = execution["metadata"]
        entry = self._executions.get(metadata["uid"])
        if entry is None:
            self._forget_idle()
            entry = self._executions[metadata["uid"]] = _Execution(
                metadata["namespace"], metadata["name"], metadata["uid"]
            )
        if binding not in entry.counters:
            entry.counters[binding] = _written_counters(execution, binding, binding_type)
        counters = entry.counters[binding]
        counters["calls"] += 1
        for name, count in (counts or {}).items():
            counters[name] = counters.get(name, 0) + count
        if error is not None:
            counters["refused" if refused else "errors"] += 1
            counters["lastError"] = f"{error.code}: {error.message}"[:MAX_BINDING_ERROR_LENGTH]
        entry.touched_at = time.monotonic()
        entry.dirty = True
        if entry.writer is None or entry.writer.done():
            entry.writer = asyncio.create_task(self._write(entry))

    async def flush(self) -> None:
        """Waits for the pending writes (at shutdown, and in tests)."""
        await asyncio.gather(*(e.writer for e in self._executions.values() if e.writer), return_exceptions=True)

    async def _write(self, entry: _Execution) -> None:
        """Writes until nothing is left unwritten, never twice within the interval: the first call's counts go
        out at once, a burst's in one write a second later, the last ones when the calls stop."""
        while entry.dirty:
            wait = entry.written_at + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            entry.dirty = False
            entry.written_at = time.monotonic()
            patch = {"status": {"bindings": [dict(c) for _, c in sorted(entry.counters.items())]}}
            try:
                await self._kube.patch_status(entry.namespace, entry.name, entry.uid, patch)
            except Exception as error:  # the next call's write carries the counts; the calls go on
                logger.warning("status.bindings of %s/%s not written: %s", entry.namespace, entry.name, error)

    def _forget_idle(self) -> None:
        now = time.monotonic()
        for uid in [uid for uid, e in self._executions.items() if now - e.touched_at > IDLE_SECONDS]:
            del self._executions[uid]


def _written_counters(execution: dict[str, Any], binding: str, binding_type: BindingType) -> dict[str, Any]:
    """The binding's entry as status.bindings holds it, else a fresh one (zero counts of its type)."""
    for written in (execution.get("status") or {}).get("bindings") or []:
        if written.get("name") == binding:
            try:
                usage = BindingUsage.model_validate(written)
            except ValueError:
                break
            return usage.model_dump(by_alias=True, exclude_none=True)
    fresh = BindingUsage(name=binding, type=binding_type).model_dump(by_alias=True, exclude_none=True)
    return fresh | dict.fromkeys(COUNTS[binding_type], 0)
