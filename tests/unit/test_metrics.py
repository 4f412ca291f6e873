"""Metrics of Executions (counter by phase and language, run-time histogram, in-flight gauge) and
the milestone Events, from the status changes the operator writes."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from codeexec import metrics, milestones
from tests.unit.factories import plan


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def in_flight() -> float:
    return value("codeexec_executions_in_flight")


def new_uid() -> str:
    return str(uuid.uuid4())


def test_a_run_counts_each_phase_once_and_its_duration() -> None:
    uid = new_uid()
    pending = value("codeexec_executions_total", language="python", phase="Pending")
    running = value("codeexec_executions_total", language="python", phase="Running")
    succeeded = value("codeexec_executions_total", language="python", phase="Succeeded")
    runs = value("codeexec_execution_duration_seconds_count", language="python", phase="Succeeded")
    total = value("codeexec_execution_duration_seconds_sum", language="python", phase="Succeeded")
    flying = in_flight()

    metrics.record(uid, "python", None, {"phase": "Pending"})
    assert in_flight() == flying + 1
    metrics.record(uid, "python", "Pending", {"phase": "Running", "podName": "p"})
    metrics.record(uid, "python", "Running", {"podName": "p"})  # no phase: no change
    metrics.record(uid, "python", "Running", {"phase": "Running"})  # same phase: not counted again
    assert in_flight() == flying + 1
    metrics.record(uid, "python", "Running", {"phase": "Succeeded", "reason": "Completed", "durationMs": 1500})

    assert value("codeexec_executions_total", language="python", phase="Pending") == pending + 1
    assert value("codeexec_executions_total", language="python", phase="Running") == running + 1
    assert value("codeexec_executions_total", language="python", phase="Succeeded") == succeeded + 1
    assert value("codeexec_execution_duration_seconds_count", language="python", phase="Succeeded") == runs + 1
    assert value("codeexec_execution_duration_seconds_sum", language="python", phase="Succeeded") == total + 1.5
    assert in_flight() == flying


def test_in_flight_never_double_counts_nor_goes_negative() -> None:
    uid = new_uid()
    flying = in_flight()
    metrics.track(uid, "Running")  # resumed after a restart
    metrics.track(uid, "Running")  # and again (a retried handler)
    metrics.track(new_uid(), "Succeeded")  # finished ones are not in flight
    metrics.track(new_uid(), None)  # nor ones not yet accepted
    assert in_flight() == flying + 1
    metrics.record(uid, "python", "Running", {"phase": "Failed", "reason": "OOMKilled"})
    metrics.forget(uid)
    metrics.forget(uid)
    assert in_flight() == flying


def test_a_deleted_execution_leaves_the_gauge() -> None:
    uid = new_uid()
    flying = in_flight()
    metrics.record(uid, "js", None, {"phase": "Pending"})
    metrics.forget(uid)
    assert in_flight() == flying


def test_rejections_of_unknown_languages_do_not_make_label_values() -> None:
    before = value("codeexec_executions_total", language="unknown", phase="Rejected")
    metrics.record(new_uid(), "made-up-" + new_uid(), None, {"phase": "Rejected", "reason": "UnknownLanguage"})
    metrics.record(new_uid(), "x" * 63, None, {"phase": "Rejected", "reason": "InvalidSpec"})
    assert value("codeexec_executions_total", language="unknown", phase="Rejected") == before + 2
    # A known language's rejection (say, a timeout too long) keeps its language.
    assert metrics.language_label("python", "TimeoutTooLong") == "python"
    assert metrics.language_label(None) == "unknown"


def test_accepted_event_tells_the_resolved_plan() -> None:
    event = milestones.accepted(plan(timeoutSeconds=12, resources={"cpu": "250m", "memory": "128Mi"}))
    assert event == milestones.Milestone("Normal", "Accepted", "Runtime python, timeout 12s, cpu 250m, memory 128Mi")


def test_sandbox_created_event() -> None:
    assert milestones.sandbox_created("hello-0f1e2d3c") == milestones.Milestone(
        "Normal", "SandboxCreated", "Created pod hello-0f1e2d3c with its ConfigMap and NetworkPolicy"
    )


@pytest.mark.parametrize(
    ("previous", "patch", "expected"),
    [
        (
            "Pending",
            {"phase": "Running", "podName": "hello-1"},
            milestones.Milestone("Normal", "Started", "Pod hello-1 is running the program"),
        ),
        (
            "Running",
            {"phase": "Succeeded", "reason": "Completed", "exitCode": 0, "durationMs": 42, "message": "Exit 0."},
            milestones.Milestone("Normal", "Completed", "Succeeded, exit code 0, ran 42 ms: Exit 0."),
        ),
        (
            "Running",
            {"phase": "TimedOut", "reason": "Timeout", "durationMs": 5000},
            milestones.Milestone("Warning", "Timeout", "TimedOut, ran 5000 ms"),
        ),
        (
            None,
            {"phase": "Rejected", "reason": "UnknownLanguage", "message": 'spec.language "x" is not installed'},
            milestones.Milestone("Warning", "UnknownLanguage", 'Rejected: spec.language "x" is not installed'),
        ),
        (
            "Running",
            {"phase": "Failed", "reason": "OOMKilled", "exitCode": 137},
            milestones.Milestone("Warning", "OOMKilled", "Failed, exit code 137"),
        ),
    ],
)
def test_milestone_of_a_status_change(
    previous: str | None, patch: dict[str, object], expected: milestones.Milestone
) -> None:
    assert milestones.from_patch(previous, patch) == expected


@pytest.mark.parametrize(
    ("previous", "patch"),
    [
        (None, {"phase": "Pending"}),  # announced by `accepted`, which knows the plan
        ("Running", {"phase": "Running"}),  # nothing new
        ("Running", {"podName": "p"}),  # no phase
    ],
)
def test_no_milestone(previous: str | None, patch: dict[str, object]) -> None:
    assert milestones.from_patch(previous, patch) is None
