"""Computes Execution status patches from validation, the pod and the runner's report, without I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from codeexec.config import OperatorConfig
from codeexec.report import Report
from codeexec.vocabulary import (
    ACCEPTED,
    CLAIMED_AT_ANNOTATION,
    COMPLETED,
    CONDITION_ACCEPTED,
    CONDITION_FINISHED,
    DEADLINE_EXCEEDED,
    EVICTED,
    IMAGE_ERROR,
    NETWORK_NOT_ISOLATED,
    NON_ZERO_EXIT,
    OOM_KILLED,
    POD_DELETED,
    POD_FAILED,
    QUEUE_TIMEOUT,
    QUEUED,
    REPORT_MISSING,
    RUNTIME_CLASS_MISSING,
    SANDBOX_CONTAINER,
    START_TIMEOUT,
    TERMINAL_PHASES,
    TIMEOUT,
    UNSCHEDULABLE,
    Phase,
    Sandbox,
)
from codeexec_runner import contract

Status = Mapping[str, Any]
Patch = dict[str, Any]

# Waiting reasons that fail an Execution at once: sandbox images are imported or pulled once,
# so a pull error rarely fixes itself, and waiting out the start deadline helps nobody.
IMAGE_ERROR_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
# The scheduler finding no room this long is shown (reason Queued, its message); shorter spells are not.
NO_ROOM_NOTICE_SECONDS = 10
_PHASE_ORDER = {None: 0, Phase.PENDING: 1, Phase.RUNNING: 2}


def is_terminal(phase: str | None) -> bool:
    return phase in TERMINAL_PHASES


def can_transition(current: str | None, new: str) -> bool:
    """Phases only move forward: Pending → Running → a terminal phase, which is final."""
    if is_terminal(current):
        return False
    new_rank = len(_PHASE_ORDER) if is_terminal(new) else _PHASE_ORDER[Phase(new)]
    return new_rank > _PHASE_ORDER[Phase(current) if current else None]


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def rejected(status: Status, reason: str, message: str, now: datetime, generation: int) -> Patch:
    """An Execution that will never run. A missing RuntimeClass is the cluster's fault, not the spec's."""
    phase = Phase.FAILED if reason == RUNTIME_CLASS_MISSING else Phase.REJECTED
    patch = _finished(status, phase, reason, message, now, generation)
    patch["conditions"] = with_condition(
        patch["conditions"], CONDITION_ACCEPTED, "False", reason, message, now, generation
    )
    return patch


def pending(
    status: Status,
    now: datetime,
    generation: int,
    resources: Mapping[str, str],
    resolved_addresses: Sequence[str] = (),
) -> Patch:
    """Accepted: the sandbox's resources are fixed; it is created now or when the queue lets it."""
    patch: Patch = {
        "phase": Phase.PENDING.value,
        "observedGeneration": generation,
        "resources": dict(resources),
        "conditions": with_condition(
            status.get("conditions", []),
            CONDITION_ACCEPTED,
            "True",
            ACCEPTED,
            "The spec is valid; the sandbox is being created.",
            now,
            generation,
        ),
    }
    if resolved_addresses:
        patch["resolvedAddresses"] = list(resolved_addresses)
    return patch


def queued(position: int | None, message: str) -> Patch:
    """Waiting for capacity (Pending stays the phase, so `kubectl wait` works as before)."""
    return {"reason": QUEUED, "message": _join(message, None), "queuePosition": position}


def queue_timeout(status: Status, now: datetime, generation: int) -> Patch:
    """The queue deadline (creation + spec.queueTimeoutSeconds) passed while it waited; says what for."""
    return _finished(
        status,
        Phase.FAILED,
        QUEUE_TIMEOUT,
        _join("Still waiting at the queue deadline (spec.queueTimeoutSeconds from creation)", status.get("message")),
        now,
        generation,
    )


def pod_deleted(status: Status, now: datetime, generation: int) -> Patch:
    return _finished(
        status,
        Phase.FAILED,
        POD_DELETED,
        "The sandbox pod disappeared before its outcome was recorded.",
        now,
        generation,
    )


def sandbox_not_created(status: Status, error: str, now: datetime, generation: int) -> Patch:
    return _finished(
        status,
        Phase.FAILED,
        POD_FAILED,
        _join("The sandbox could not be created", error),
        now,
        generation,
    )


def from_pod(
    status: Status,
    pod: Mapping[str, Any],
    report: Report | None,
    config: OperatorConfig,
    now: datetime,
    generation: int,
    queue_deadline: datetime | None = None,
) -> Patch | None:
    """What the pod says about the Execution; None when it changes nothing. A pod the scheduler cannot
    place for lack of CPU or memory waits as Queued until `queue_deadline`."""
    if is_terminal(status.get("phase")):
        return None
    state = _container_status(pod).get("state", {})
    terminated = state.get("terminated")
    # Code can print a forged report; a forgery cannot also set the container's exit code.
    trusted = report if report is not None and terminated and report.exit_code == terminated.get("exitCode") else None

    outcome = _outcome(pod, terminated, trusted)
    if outcome is not None:
        phase, reason, message = outcome
        if reason == NETWORK_NOT_ISOLATED:
            # The program never ran: no exit code, output or duration of its own to report.
            fields = _pod_fields(status, pod)
            note = None
        else:
            fields, note = _outcome_fields(status, pod, terminated or {}, trusted, config, now)
        return _finished(status, phase, reason, _join(message, note), now, generation, **fields)

    if pod.get("metadata", {}).get("deletionTimestamp"):
        return _finished(
            status,
            Phase.FAILED,
            POD_DELETED,
            "The sandbox pod was deleted before the program finished.",
            now,
            generation,
            **_pod_fields(status, pod),
        )

    waiting = state.get("waiting", {})
    if waiting.get("reason") in IMAGE_ERROR_REASONS:
        return _finished(
            status,
            Phase.FAILED,
            IMAGE_ERROR,
            _join(waiting.get("reason"), waiting.get("message")),
            now,
            generation,
            **_pod_fields(status, pod),
        )

    running = state.get("running")
    if running is not None:
        if not can_transition(status.get("phase"), Phase.RUNNING):
            return None
        return {
            "phase": Phase.RUNNING.value,
            "startedAt": _claimed_at(pod) or running.get("startedAt") or rfc3339(now),
            **_pod_fields(status, pod),
            "observedGeneration": generation,
            **_left_queue(status),
        }

    no_room = _lacking_capacity(pod.get("status", {}))
    if no_room is not None:
        message, since = no_room
        if queue_deadline is not None and now >= queue_deadline:
            return {**queue_timeout(status, now, generation), **_pod_fields(status, pod)}
        patch = queued(None, f"waiting for capacity: {message}")
        # A moment without room (the pod before it is still stopping) is not worth a write; the timer looks again.
        brief = since is not None and (now - since).total_seconds() < NO_ROOM_NOTICE_SECONDS
        return None if brief or status.get("message") == patch["message"] else patch
    started = _start_clock(pod)
    if started and (now - started).total_seconds() > config.start_deadline_seconds:
        reason, message = _start_failure(pod.get("status", {}), waiting, config)
        return _finished(status, Phase.FAILED, reason, message, now, generation, **_pod_fields(status, pod))
    return None


def ttl_expired(status: Status, ttl_seconds: int | None, now: datetime) -> bool:
    """A finished Execution whose ttlSecondsAfterFinished has passed."""
    finished_at = status.get("finishedAt")
    if ttl_seconds is None or not finished_at or not is_terminal(status.get("phase")):
        return False
    return (now - parse_time(finished_at)).total_seconds() >= ttl_seconds


def sandbox_terminated(pod: Mapping[str, Any]) -> bool:
    """The sandbox container has run and ended: its log holds the runner's report, if any."""
    return _container_status(pod).get("state", {}).get("terminated") is not None


def _outcome(
    pod: Mapping[str, Any], terminated: Mapping[str, Any] | None, report: Report | None
) -> tuple[Phase, str, str] | None:
    """Phase, reason and message of a finished pod; None while it has not finished.
    The container's terminated state is authoritative; the report only adds detail."""
    pod_status = pod.get("status", {})
    if terminated is not None and terminated.get("reason") == "OOMKilled":
        limit = _memory_limit(pod)
        return Phase.FAILED, OOM_KILLED, f"The sandbox exceeded its memory limit of {limit}."
    if pod_status.get("reason") == "Evicted":
        return Phase.FAILED, EVICTED, _join("The sandbox pod was evicted", pod_status.get("message"))
    if pod_status.get("reason") == "DeadlineExceeded":
        return (
            Phase.TIMED_OUT,
            DEADLINE_EXCEEDED,
            _join("The pod's activeDeadlineSeconds passed", pod_status.get("message")),
        )
    if terminated is None:
        if pod_status.get("phase") in ("Succeeded", "Failed"):
            return (
                Phase.FAILED,
                POD_FAILED,
                _join(f"The pod ended ({pod_status.get('phase')})", pod_status.get("message")),
            )
        return None

    exit_code = terminated.get("exitCode")
    if report is None:
        return (
            Phase.FAILED,
            REPORT_MISSING,
            f"The runner's report is missing or disagrees with the container's exit code {exit_code}; "
            "output and result are unknown",
        )
    isolation = report.network_isolation
    if isolation is not None and not isolation.isolated:
        # Fail closed: without an enforced NetworkPolicy the sandbox could reach anything.
        return (
            Phase.FAILED,
            NETWORK_NOT_ISOLATED,
            f"The sandbox's NetworkPolicy was not in effect: the isolation probe {isolation.probe} was still "
            f"reachable after {isolation.waited_ms / 1000:.1f} s, so the code did not run; "
            "check that the cluster runs a NetworkPolicy enforcer",
        )
    if report.timed_out:
        return Phase.TIMED_OUT, TIMEOUT, _join("The program exceeded its timeout", report.error)
    if exit_code == 0:
        return Phase.SUCCEEDED, COMPLETED, _join("The program exited with code 0", report.error)
    signal = f" (signal {report.signal})" if report.signal else ""
    return (
        Phase.FAILED,
        NON_ZERO_EXIT,
        _join(f"The program exited with code {exit_code}{signal}", report.error),
    )


def _outcome_fields(
    status: Status,
    pod: Mapping[str, Any],
    terminated: Mapping[str, Any],
    report: Report | None,
    config: OperatorConfig,
    now: datetime,
) -> tuple[dict[str, Any], str | None]:
    """Status fields of a finished pod: the container's facts, then the trusted report's detail."""
    fields: dict[str, Any] = {
        **_pod_fields(status, pod),
        "finishedAt": terminated.get("finishedAt") or rfc3339(now),
    }
    if "exitCode" in terminated:
        fields["exitCode"] = terminated["exitCode"]
    started_at = status.get("startedAt") or _claimed_at(pod) or terminated.get("startedAt")
    if started_at:
        fields["startedAt"] = started_at
        elapsed = parse_time(fields["finishedAt"]) - parse_time(started_at)
        fields["durationMs"] = max(0, int(elapsed.total_seconds() * 1000))
    if report is None:
        return fields, None
    report_fields, note = _report_fields(report, config)
    return {**fields, **report_fields}, note


def _report_fields(report: Report, config: OperatorConfig) -> tuple[dict[str, Any], str | None]:
    """Status fields from a trusted report, capped again so the status stays small."""
    stdout, stdout_cut = _cap_text(report.stdout.text, config.max_output_bytes)
    stderr, stderr_cut = _cap_text(report.stderr.text, config.max_output_bytes)
    logs, logs_cut = _cap_logs(report)
    fields: dict[str, Any] = {
        "exitCode": report.exit_code,
        "durationMs": report.duration_ms,
        "stdout": stdout,
        "stdoutBytes": report.stdout.bytes,
        "stdoutTruncated": report.stdout.truncated or stdout_cut,
        "stderr": stderr,
        "stderrBytes": report.stderr.bytes,
        "stderrTruncated": report.stderr.truncated or stderr_cut,
        "logs": logs,
        "logsTruncated": report.logs_truncated or logs_cut,
    }
    if report.usage is not None:
        fields["usage"] = {"cpuMs": report.usage.cpu_ms, "peakMemoryBytes": report.usage.peak_memory_bytes}
    note = None
    if report.has_result:
        size = len(json.dumps(report.result).encode())
        if size <= config.max_output_bytes:
            fields["result"] = report.result
        else:
            note = f"the result ({size} bytes as JSON) exceeds {config.max_output_bytes} bytes and was dropped"
    return fields, note


def _cap_text(text: str, max_bytes: int) -> tuple[str, bool]:
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text, False
    # "ignore" drops a multi-byte character cut in half at the end.
    return encoded[:max_bytes].decode(errors="ignore"), True


def _cap_logs(report: Report) -> tuple[list[dict[str, str]], bool]:
    # The runner already bounds logs like this; the operator does not rely on it.
    kept = []
    budget = contract.MAX_LOG_BYTES
    for entry in report.logs[: contract.MAX_LOG_ENTRIES]:
        budget -= len(entry.message.encode())
        if budget < 0:
            break
        kept.append(entry.model_dump())
    return kept, len(kept) < len(report.logs)


def _left_queue(status: Status) -> Patch:
    """Removes what the queue wrote (merge patch: null deletes)."""
    if status.get("reason") == QUEUED or status.get("queuePosition") is not None:
        return {"reason": None, "message": None, "queuePosition": None}
    return {}


def _lacking_capacity(pod_status: Mapping[str, Any]) -> tuple[str, datetime | None] | None:
    """The scheduler's message, and since when, when it found no node with enough free CPU or memory."""
    for condition in pod_status.get("conditions", []):
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            message = condition.get("message") or ""
            since = condition.get("lastTransitionTime")
            return (message, parse_time(since) if since else None) if "Insufficient" in message else None
    return None


def _start_clock(pod: Mapping[str, Any]) -> datetime | None:
    """When the start deadline began: the pod's creation, or its scheduling if later (it may have waited
    for room as Queued before)."""
    created = pod.get("metadata", {}).get("creationTimestamp")
    moments = [parse_time(created)] if created else []
    for condition in pod.get("status", {}).get("conditions", []):
        scheduled = condition.get("type") == "PodScheduled" and condition.get("status") == "True"
        if scheduled and condition.get("lastTransitionTime"):
            moments.append(parse_time(condition["lastTransitionTime"]))
    return max(moments, default=None)


def _start_failure(
    pod_status: Mapping[str, Any], waiting: Mapping[str, Any], config: OperatorConfig
) -> tuple[str, str]:
    for condition in pod_status.get("conditions", []):
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return UNSCHEDULABLE, _join("The pod could not be scheduled", condition.get("message"))
    detail = _join(waiting.get("reason"), waiting.get("message"))
    return START_TIMEOUT, _join(f"The pod did not start within {config.start_deadline_seconds} seconds", detail)


def _finished(
    status: Status,
    phase: Phase,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
    **fields: Any,
) -> Patch:
    return {
        "finishedAt": rfc3339(now),
        **fields,
        **({"queuePosition": None} if status.get("queuePosition") is not None else {}),
        "phase": phase.value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "conditions": with_condition(
            status.get("conditions", []),
            CONDITION_FINISHED,
            "True",
            reason,
            message,
            now,
            generation,
        ),
    }


def with_condition(
    conditions: list[Mapping[str, Any]],
    condition_type: str,
    condition_status: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int,
) -> list[dict[str, Any]]:
    """The conditions with one set; lastTransitionTime only moves when its status changes."""
    previous = next((c for c in conditions if c.get("type") == condition_type), {})
    transition_time = rfc3339(now)
    if previous.get("status") == condition_status:
        transition_time = previous.get("lastTransitionTime", transition_time)
    condition = {
        "type": condition_type,
        "status": condition_status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition_time,
        "observedGeneration": generation,
    }
    others = [dict(c) for c in conditions if c.get("type") != condition_type]
    return [*others, condition]


def _container_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == SANDBOX_CONTAINER), {})


def _memory_limit(pod: Mapping[str, Any]) -> str:
    containers = pod.get("spec", {}).get("containers", [])
    sandbox: Mapping[str, Any] = next((c for c in containers if c.get("name") == SANDBOX_CONTAINER), {})
    limit: str = sandbox.get("resources", {}).get("limits", {}).get("memory", "unknown")
    return limit


def _claimed_at(pod: Mapping[str, Any]) -> str | None:
    """When a warm pod was claimed (the program started then, not when the pod did); None for a cold pod."""
    annotation: str | None = (pod.get("metadata", {}).get("annotations") or {}).get(CLAIMED_AT_ANNOTATION)
    return annotation


def sandbox_kind(pod: Mapping[str, Any]) -> Sandbox:
    """Which path made the pod the Execution's: a claimed warm pool pod, or one created for it."""
    return Sandbox.WARM if _claimed_at(pod) else Sandbox.COLD


def _pod_fields(status: Status, pod: Mapping[str, Any]) -> Patch:
    """The pod's name, with the path that gave it (status.sandbox) unless the status already says."""
    name: str = pod.get("metadata", {}).get("name", "")
    if name and status.get("sandbox") is None:
        return {"podName": name, "sandbox": sandbox_kind(pod).value}
    return {"podName": name}


def _join(first: str | None, second: str | None) -> str:
    """Sentence parts joined with ": " (either may be missing), ending with a full stop."""
    text = ": ".join(part.strip().rstrip(".") for part in (first, second) if part and part.strip())
    return f"{text}." if text else ""
