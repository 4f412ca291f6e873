"""What one call may use: the binding's per-call limits, and what an Execution has left of its budgets (db: rows;
ai: requests and tokens).

Budgets live in this process only: the broker runs as one replica (the chart's `replicas: 1`), so every call of an
Execution is counted here. A broker restart starts them afresh (its status.bindings counters survive: usage.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from codeexec.broker.errors import BudgetExceeded, StatementTimeout, TooManyCalls
from codeexec.models import AiBinding, DbBinding

# Calls one Execution may have running at once (half the SQLite engine's workers), and the whole broker: each holds
# memory up to its byte limit, so together they stay within the broker pod's.
MAX_CALLS_PER_EXECUTION = 4
MAX_CALLS_IN_FLIGHT = 32
# An Execution runs at most an hour (config max_timeout_seconds ≤ 3600): a budget untouched for longer belongs
# to one that has ended.
IDLE_BUDGET_SECONDS = 2 * 3600.0


@dataclass(frozen=True)
class CallLimits:
    """The limits of one call. `timeout_ms` (statementTimeoutMs) bounds the whole call from when an engine takes
    it: its statements together (an exec script's too), the wait for a worker, a connection or a lock included."""

    read_only: bool
    timeout_ms: int
    max_rows: int
    # Which limit max_rows is, for the message of LimitExceeded.
    rows_limit: str
    max_bytes: int

    def deadline(self) -> float:
        """The time.monotonic() by which a call taken now must have ended."""
        return time.monotonic() + self.timeout_ms / 1000

    def timed_out(self) -> StatementTimeout:
        return StatementTimeout(f"the call ran longer than {self.timeout_ms} ms (statementTimeoutMs)")


class _Used(Protocol):
    used_at: float


B = TypeVar("B", bound=_Used)


class _PerExecution(Generic[B]):
    """Budgets by (Execution uid, binding), each made on its first call and forgotten once idle."""

    def __init__(self) -> None:
        self._budgets: dict[tuple[str, str], B] = {}
        self.lock = threading.Lock()

    def get(self, uid: str, binding: str, make: Callable[[], B]) -> B:
        """The budget (made now if new); the caller holds `lock`."""
        now = time.monotonic()
        for key in [key for key, budget in self._budgets.items() if now - budget.used_at > IDLE_BUDGET_SECONDS]:
            del self._budgets[key]
        budget = self._budgets.setdefault((uid, binding), make())
        budget.used_at = now
        return budget


@dataclass
class _Rows:
    remaining: int
    used_at: float = 0.0


class RowBudgets:
    """Rows left per (Execution uid, binding). A call reserves what it may return before it runs and gives back
    what it did not return, so calls running at once cannot together pass the Execution's limit."""

    def __init__(self) -> None:
        self._budgets: _PerExecution[_Rows] = _PerExecution()

    @contextmanager
    def call(self, uid: str, binding: str, spec: DbBinding) -> Iterator[tuple[CallLimits, list[int]]]:
        """The call's limits and a one-item list the call sets to the rows it returned."""
        with self._budgets.lock:
            budget = self._budgets.get(uid, binding, lambda: _Rows(spec.max_rows_per_execution))
            reserved = min(spec.max_rows_per_call, budget.remaining)
            budget.remaining -= reserved
        if reserved < spec.max_rows_per_call:
            rows_limit = f"maxRowsPerExecution {spec.max_rows_per_execution}: {reserved} rows left"
        else:
            rows_limit = f"maxRowsPerCall {spec.max_rows_per_call}"
        limits = CallLimits(spec.read_only, spec.statement_timeout_ms, reserved, rows_limit, spec.max_bytes_per_call)
        returned = [0]
        try:
            yield limits, returned
        finally:
            with self._budgets.lock:
                budget.remaining += reserved - min(returned[0], reserved)


class CallsInFlight:
    """The calls running now, per Execution uid and in all; one past either cap is refused (429 TooManyCalls), not
    queued: a queue would let one Execution's calls delay everyone's."""

    def __init__(self, per_execution: int = MAX_CALLS_PER_EXECUTION, total: int = MAX_CALLS_IN_FLIGHT) -> None:
        self._per_execution = per_execution
        self._total = total
        self._running: dict[str, int] = {}

    @contextmanager
    def call(self, uid: str) -> Iterator[None]:
        """Used on the event loop only (no lock)."""
        if self._running.get(uid, 0) >= self._per_execution:
            raise TooManyCalls(f"this Execution already has {self._per_execution} calls running (at most that many)")
        if sum(self._running.values()) >= self._total:
            raise TooManyCalls(f"the broker already has {self._total} calls running; retry shortly")
        self._running[uid] = self._running.get(uid, 0) + 1
        try:
            yield
        finally:
            self._running[uid] -= 1
            if not self._running[uid]:
                del self._running[uid]


@dataclass
class _Inference:
    requests: int
    tokens: int
    used_at: float = 0.0


@dataclass
class Spend:
    """An ai call's share of its Execution's budget: `max_tokens` it may generate (None: not a generation); the
    call sets `tokens` to what the endpoint counted (prompt and completion)."""

    max_tokens: int | None
    tokens: int = 0


class InferenceBudgets:
    """Requests and tokens left per (Execution uid, binding). A call takes one request (kept, whatever its outcome:
    it was sent) and reserves the tokens it may generate, capped to what is left; afterwards the tokens the endpoint
    counted are charged instead of the reservation (none when it gave no answer). A prompt's own tokens are known
    only from the answer, so the call that spends the last tokens may pass the budget by them; the next call is
    refused."""

    def __init__(self) -> None:
        self._budgets: _PerExecution[_Inference] = _PerExecution()

    @contextmanager
    def call(self, uid: str, binding: str, spec: AiBinding, max_tokens: int | None) -> Iterator[Spend]:
        """`max_tokens`: what the code asks a generation to stop at (None: an embedding). BudgetExceeded when no
        request or no token is left."""
        with self._budgets.lock:
            budget = self._budgets.get(
                uid, binding, lambda: _Inference(spec.max_requests_per_execution, spec.max_tokens_per_execution)
            )
            if budget.requests <= 0:
                raise BudgetExceeded(f"no requests left (maxRequestsPerExecution {spec.max_requests_per_execution})")
            if budget.tokens <= 0:
                raise BudgetExceeded(f"no tokens left (maxTokensPerExecution {spec.max_tokens_per_execution})")
            budget.requests -= 1
            spend = Spend(None if max_tokens is None else min(max_tokens, budget.tokens))
            budget.tokens -= spend.max_tokens or 0
        try:
            yield spend
        finally:
            with self._budgets.lock:
                budget.tokens += (spend.max_tokens or 0) - spend.tokens
