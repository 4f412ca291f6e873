"""Prometheus metrics of the operator: Executions by phase and language, run times, in flight, queue, warm claims."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from codeexec.vocabulary import INVALID_SPEC, TERMINAL_PHASES, UNKNOWN_LANGUAGE, Phase

# A refused spec's language is whatever the user typed: it must not become a label value.
UNKNOWN = "unknown"
_UNRESOLVED_REASONS = frozenset({UNKNOWN_LANGUAGE, INVALID_SPEC})
_IN_FLIGHT_PHASES = frozenset({Phase.PENDING.value, Phase.RUNNING.value})

EXECUTIONS = Counter(
    "codeexec_executions",
    "Executions that reached a phase (Pending, Running, Succeeded, Failed, TimedOut, Rejected).",
    ["language", "phase"],
)
DURATION = Histogram(
    "codeexec_execution_duration_seconds",
    "Run time of finished programs (status.durationMs), by language and final phase.",
    ["language", "phase"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
IN_FLIGHT = Gauge(
    "codeexec_executions_in_flight",
    "Accepted Executions not yet finished (Pending or Running) that this operator process knows of.",
)

QUEUED = Gauge(
    "codeexec_executions_queued",
    "Accepted Executions waiting in the queue for capacity, as of this operator's last dispatch decision.",
)
QUEUE_WAIT = Histogram(
    "codeexec_queue_wait_seconds",
    "From an Execution's creation to the creation of its sandbox.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)

WARM_CLAIMS = Counter(
    "codeexec_warm_claims",
    "Executions that got a pre-started pod of a WarmPool (status.sandbox warm).",
)
WARM_MISSES = Counter(
    "codeexec_warm_misses",
    "Executions that fitted a WarmPool's pods but found none ready (or lost every race for one) and went cold.",
)
CLAIM_SECONDS = Histogram(
    "codeexec_warm_claim_seconds",
    "From the claim of a warm pod to its runner's acknowledgement of the request.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# uids, not a counter: adding and removing the same Execution twice (a retried handler, a resumed
# Execution after a restart) leaves the count right and never negative.
_in_flight: set[str] = set()
IN_FLIGHT.set_function(lambda: len(_in_flight))


def serve(port: int) -> None:
    """Serves /metrics on all interfaces from a daemon thread."""
    # No *_created series: a restart shows in process_start_time_seconds. (Untyped in prometheus-client.)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    start_http_server(port)


def language_label(language: str | None, reason: str | None = None) -> str:
    if not language or reason in _UNRESOLVED_REASONS:
        return UNKNOWN
    return language


def record(uid: str, language: str | None, previous_phase: str | None, patch: Mapping[str, Any]) -> None:
    """Counts a status change the operator wrote: each new phase, and the run time of a final one."""
    phase = patch.get("phase")
    if phase is None or phase == previous_phase:
        return
    label = language_label(language, patch.get("reason"))
    EXECUTIONS.labels(label, phase).inc()
    if phase in TERMINAL_PHASES:
        _in_flight.discard(uid)
        duration_ms = patch.get("durationMs")
        if duration_ms is not None:
            DURATION.labels(label, phase).observe(duration_ms / 1000)
    elif phase in _IN_FLIGHT_PHASES:
        _in_flight.add(uid)


def track(uid: str, phase: str | None) -> None:
    """An unfinished Execution seen again (e.g. resumed after a restart) counts as in flight."""
    if phase in _IN_FLIGHT_PHASES:
        _in_flight.add(uid)


def forget(uid: str) -> None:
    """An Execution that is gone is no longer in flight."""
    _in_flight.discard(uid)


def dequeued(waited_seconds: float) -> None:
    """A sandbox was created this long after its Execution."""
    QUEUE_WAIT.observe(waited_seconds)


POOL_DESIRED = Gauge(
    "codeexec_warm_pool_desired",
    "Idle sandboxes a WarmPool keeps (spec.replicas, capped at the operator's maximum; 0 while it cannot fill).",
    ["namespace", "pool"],
)
POOL_READY = Gauge(
    "codeexec_warm_pool_ready",
    "Idle sandboxes of a WarmPool ready to be claimed, as of its last reconciliation.",
    ["namespace", "pool"],
)


def pool_observed(namespace: str, pool: str, desired: int, ready: int) -> None:
    POOL_DESIRED.labels(namespace, pool).set(desired)
    POOL_READY.labels(namespace, pool).set(ready)


def pool_removed(namespace: str, pool: str) -> None:
    """A deleted pool's series go (a gauge left behind would report its last values for ever)."""
    for gauge in (POOL_DESIRED, POOL_READY):
        try:
            gauge.remove(namespace, pool)
        except KeyError:
            continue
