"""The Kubernetes Event each milestone of an Execution gets (accepted or rejected, sandbox created,
started, finished with its reason), computed without I/O from the status change the operator wrote."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from codeexec.validation import Plan, format_cpu, format_memory
from codeexec.vocabulary import (
    EVENT_ACCEPTED,
    EVENT_DEQUEUED,
    EVENT_NORMAL,
    EVENT_SANDBOX_CLAIMED,
    EVENT_SANDBOX_CREATED,
    EVENT_STARTED,
    EVENT_WARNING,
    Phase,
)


@dataclass(frozen=True)
class Milestone:
    """One Event: type (Normal or Warning), a stable CamelCase reason and a message."""

    type: str
    reason: str
    message: str


def accepted(plan: Plan) -> Milestone:
    return Milestone(
        EVENT_NORMAL,
        EVENT_ACCEPTED,
        f"Runtime {plan.runtime_name}, timeout {plan.timeout_seconds}s, "
        f"cpu {format_cpu(plan.cpu_millis)}, memory {format_memory(plan.memory_bytes)}",
    )


def dequeued(waited_seconds: float) -> Milestone:
    return Milestone(EVENT_NORMAL, EVENT_DEQUEUED, f"Left the queue after waiting {waited_seconds:.0f} s")


def sandbox_created(pod_name: str) -> Milestone:
    return Milestone(
        EVENT_NORMAL, EVENT_SANDBOX_CREATED, f"Created pod {pod_name} with its ConfigMap and NetworkPolicy"
    )


def sandbox_claimed(pod_name: str, acknowledged: bool) -> Milestone:
    if acknowledged:
        return Milestone(EVENT_NORMAL, EVENT_SANDBOX_CLAIMED, f"Claimed warm pod {pod_name}; it has the code")
    return Milestone(
        EVENT_WARNING,
        EVENT_SANDBOX_CLAIMED,
        f"Claimed warm pod {pod_name}, but its runner did not acknowledge the code; the pod's outcome decides",
    )


def from_patch(previous_phase: str | None, patch: Mapping[str, Any]) -> Milestone | None:
    """The Event for a status patch that moved the Execution to Running or a final phase; None otherwise
    (Pending is announced by `accepted`, which knows the plan)."""
    phase = patch.get("phase")
    if phase is None or phase == previous_phase:
        return None
    if phase == Phase.RUNNING:
        pod = patch.get("podName")
        return Milestone(
            EVENT_NORMAL, EVENT_STARTED, f"Pod {pod} is running the program" if pod else "The program is running"
        )
    if phase == Phase.PENDING:
        return None
    details = [str(phase)]
    if patch.get("exitCode") is not None:
        details.append(f"exit code {patch['exitCode']}")
    if patch.get("durationMs") is not None:
        details.append(f"ran {patch['durationMs']} ms")
    message = ", ".join(details)
    if patch.get("message"):
        message += f": {patch['message']}"
    event_type = EVENT_NORMAL if phase == Phase.SUCCEEDED else EVENT_WARNING
    return Milestone(event_type, str(patch.get("reason") or phase), message)
