"""What one call may use: the binding's per-call limits, and the rows an Execution has left of its budget.

Budgets live in this process only: the broker runs as one replica (the chart's `replicas: 1`), so every call of an
Execution is counted here. A broker restart starts them afresh (its status.bindings counters survive: usage.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from codeexec.models import DbBinding

# An Execution runs at most an hour (config max_timeout_seconds ≤ 3600): a budget untouched for longer belongs
# to one that has ended.
IDLE_BUDGET_SECONDS = 2 * 3600.0


@dataclass(frozen=True)
class CallLimits:
    """The limits of one call."""

    read_only: bool
    timeout_ms: int
    max_rows: int
    # Which limit max_rows is, for the message of LimitExceeded.
    rows_limit: str
    max_bytes: int


@dataclass
class _Budget:
    remaining: int
    used_at: float


class RowBudgets:
    """Rows left per (Execution uid, binding). A call reserves what it may return before it runs and gives back
    what it did not return, so calls running at once cannot together pass the Execution's limit."""

    def __init__(self) -> None:
        self._budgets: dict[tuple[str, str], _Budget] = {}
        self._lock = threading.Lock()

    @contextmanager
    def call(self, uid: str, binding: str, spec: DbBinding) -> Iterator[tuple[CallLimits, list[int]]]:
        """The call's limits and a one-item list the call sets to the rows it returned."""
        now = time.monotonic()
        with self._lock:
            self._forget_idle(now)
            budget = self._budgets.setdefault((uid, binding), _Budget(spec.max_rows_per_execution, now))
            reserved = min(spec.max_rows_per_call, budget.remaining)
            budget.remaining -= reserved
            budget.used_at = now
        if reserved < spec.max_rows_per_call:
            rows_limit = f"maxRowsPerExecution {spec.max_rows_per_execution}: {reserved} rows left"
        else:
            rows_limit = f"maxRowsPerCall {spec.max_rows_per_call}"
        limits = CallLimits(spec.read_only, spec.statement_timeout_ms, reserved, rows_limit, spec.max_bytes_per_call)
        returned = [0]
        try:
            yield limits, returned
        finally:
            with self._lock:
                budget.remaining += reserved - min(returned[0], reserved)

    def _forget_idle(self, now: float) -> None:
        for key in [key for key, budget in self._budgets.items() if now - budget.used_at > IDLE_BUDGET_SECONDS]:
            del self._budgets[key]
