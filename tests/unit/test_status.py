"""Status patches for every phase and reason; the container's exit code is authoritative."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from codeexec import status, vocabulary
from codeexec.config import OperatorConfig
from codeexec.models import ExecutionStatus
from codeexec.report import Report
from codeexec.vocabulary import Phase
from tests.unit.factories import NOW, pod, report, report_data, terminated, timestamp

CONFIG = OperatorConfig()
PENDING: dict[str, Any] = {
    "phase": "Pending",
    "conditions": [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "Accepted",
            "message": "",
            "lastTransitionTime": "2030-01-01T00:00:00Z",
            "observedGeneration": 1,
        }
    ],
}
RESOURCES = {"cpu": "500m", "memory": "256Mi"}
RUNNING = {**PENDING, "phase": "Running", "startedAt": timestamp(NOW - timedelta(seconds=3))}


def observe(
    sandbox: dict[str, Any],
    runner_report: Report | None = None,
    current: dict[str, Any] | None = None,
    config: OperatorConfig = CONFIG,
) -> dict[str, Any]:
    patch = status.from_pod(RUNNING if current is None else current, sandbox, runner_report, config, NOW, 1)
    assert patch is not None
    ExecutionStatus.model_validate(patch)  # every key is a real status field with the right type
    return patch


def condition(patch: dict[str, Any], condition_type: str) -> dict[str, Any]:
    matches = [c for c in patch["conditions"] if c["type"] == condition_type]
    assert len(matches) == 1
    return matches[0]


def assert_finished(patch: dict[str, Any], phase: str, reason: str) -> None:
    assert (patch["phase"], patch["reason"]) == (phase, reason)
    assert patch["observedGeneration"] == 1
    finished = condition(patch, "Finished")
    assert (finished["status"], finished["reason"], finished["message"]) == ("True", reason, patch["message"])
    assert finished["lastTransitionTime"] == timestamp(NOW)
    assert condition(patch, "Accepted") == PENDING["conditions"][0]
    assert status.is_terminal(patch["phase"])


def test_completed_with_everything_from_the_report() -> None:
    patch = observe(pod(phase="Succeeded", state=terminated(0)), report())
    assert_finished(patch, "Succeeded", vocabulary.COMPLETED)
    assert patch["message"] == "The program exited with code 0."
    assert patch["exitCode"] == 0
    assert (patch["stdout"], patch["stdoutBytes"], patch["stdoutTruncated"]) == ("hello\n", 6, False)
    assert (patch["stderr"], patch["stderrBytes"], patch["stderrTruncated"]) == ("", 0, False)
    assert patch["result"] == {"sum": 6}
    assert patch["logs"] == [{"level": "info", "time": "2030-01-02T03:04:04.123Z", "message": "summing"}]
    assert patch["logsTruncated"] is False
    assert patch["durationMs"] == 1234
    assert patch["usage"] == {"cpuMs": 420, "peakMemoryBytes": 12 * 1024 * 1024}
    assert patch["startedAt"] == RUNNING["startedAt"]
    assert patch["finishedAt"] == timestamp(NOW)
    assert patch["podName"] == "hello-0f1e2d3c"


def test_no_result_leaves_result_out() -> None:
    patch = observe(pod(phase="Succeeded", state=terminated(0)), report(hasResult=False, result=None))
    assert "result" not in patch


def test_non_zero_exit() -> None:
    patch = observe(pod(phase="Failed", state=terminated(3, "Error")), report(exitCode=3))
    assert_finished(patch, "Failed", vocabulary.NON_ZERO_EXIT)
    assert patch["exitCode"] == 3
    assert patch["message"] == "The program exited with code 3."
    assert patch["stdout"] == "hello\n"


def test_killed_by_signal_and_harness_error_are_in_the_message() -> None:
    patch = observe(
        pod(phase="Failed", state=terminated(137, "Error")),
        report(exitCode=137, signal=9, error="result is not JSON-serialisable"),
    )
    assert_finished(patch, "Failed", vocabulary.NON_ZERO_EXIT)
    assert patch["message"] == "The program exited with code 137 (signal 9): result is not JSON-serialisable."


def test_runner_timeout() -> None:
    patch = observe(pod(phase="Failed", state=terminated(124, "Error")), report(exitCode=124, timedOut=True))
    assert_finished(patch, "TimedOut", vocabulary.TIMEOUT)
    assert patch["exitCode"] == 124
    assert patch["message"] == "The program exceeded its timeout."


NOT_ISOLATED = {"probe": "10.0.0.1:443", "isolated": False, "waitedMs": 20150, "attempts": 96}
NOT_ISOLATED_ERROR = "network isolation not in effect: 10.0.0.1:443 was still reachable after 20.1 s"


def test_network_not_isolated_fails_closed_without_program_fields() -> None:
    runner_report = report(
        exitCode=122,
        durationMs=0,
        stdout={"text": "", "bytes": 0, "truncated": False},
        hasResult=False,
        result=None,
        logs=[],
        error=NOT_ISOLATED_ERROR,
        networkIsolation=NOT_ISOLATED,
    )
    patch = observe(pod(phase="Failed", state=terminated(122, "Error")), runner_report)
    assert_finished(patch, "Failed", vocabulary.NETWORK_NOT_ISOLATED)
    assert patch["message"] == (
        "The sandbox's NetworkPolicy was not in effect: the isolation probe 10.0.0.1:443 was still reachable "
        "after 20.1 s, so the code did not run; check that the cluster runs a NetworkPolicy enforcer."
    )
    # The program never ran: no exit code, output, result or duration of its own.
    for field in ("exitCode", "durationMs", "stdout", "stderr", "result", "logs"):
        assert field not in patch, field
    assert patch["podName"] == "hello-0f1e2d3c"


def test_network_isolation_claimed_by_the_code_is_not_trusted() -> None:
    # Code can print a report line claiming isolation failed, but it ran, so the runner's real
    # report is the last line; a forged one with another exit code than the container's is ignored.
    forged = report(exitCode=122, error=NOT_ISOLATED_ERROR, networkIsolation=NOT_ISOLATED)
    patch = observe(pod(phase="Failed", state=terminated(3, "Error")), forged)
    assert patch["reason"] == vocabulary.REPORT_MISSING
    # The channel can set `error` to the same words; only the runner's networkIsolation counts.
    verified = {"probe": "10.0.0.1:443", "isolated": True, "waitedMs": 850, "attempts": 6}
    echoed = report(exitCode=122, error=NOT_ISOLATED_ERROR, networkIsolation=verified)
    patch = observe(pod(phase="Failed", state=terminated(122, "Error")), echoed)
    assert patch["reason"] == vocabulary.NON_ZERO_EXIT and patch["exitCode"] == 122


def test_verified_isolation_changes_nothing() -> None:
    verified = {"probe": "10.0.0.1:443", "isolated": True, "waitedMs": 850, "attempts": 6}
    patch = observe(pod(phase="Succeeded", state=terminated(0)), report(networkIsolation=verified))
    assert_finished(patch, "Succeeded", vocabulary.COMPLETED)


def test_forged_report_with_another_exit_code_is_ignored() -> None:
    # The code printed a "success" report and then failed: the container says 1.
    forged = report(exitCode=0, stdout={"text": "all good", "bytes": 8, "truncated": False}, result="forged")
    patch = observe(pod(phase="Failed", state=terminated(1, "Error")), forged)
    assert_finished(patch, "Failed", vocabulary.REPORT_MISSING)
    assert patch["exitCode"] == 1
    assert "1" in patch["message"]
    for field in ("stdout", "stderr", "result", "logs", "usage"):
        assert field not in patch, field


def test_missing_report() -> None:
    patch = observe(pod(phase="Failed", state=terminated(2, "Error", seconds=7)))
    assert_finished(patch, "Failed", vocabulary.REPORT_MISSING)
    assert patch["exitCode"] == 2
    assert patch["durationMs"] == 3000  # from the Running phase's startedAt to the container's end
    assert "result" not in patch and "usage" not in patch


def test_report_without_usage_leaves_usage_out() -> None:
    # A runner that could not start the program reports usage null; an older runner has no key.
    patch = observe(pod(phase="Succeeded", state=terminated(0)), report(usage=None))
    assert_finished(patch, "Succeeded", vocabulary.COMPLETED)
    assert "usage" not in patch
    older = report_data()
    del older["usage"]
    assert "usage" not in observe(pod(phase="Succeeded", state=terminated(0)), Report.model_validate(older))


def test_usage_in_the_patch_is_valid_status() -> None:
    patch = observe(pod(phase="Succeeded", state=terminated(0)), report())
    parsed = ExecutionStatus.model_validate(patch)
    assert parsed.usage is not None and (parsed.usage.cpu_ms, parsed.usage.peak_memory_bytes) == (420, 12 << 20)


def test_missing_report_duration_falls_back_to_the_container() -> None:
    patch = observe(pod(phase="Failed", state=terminated(2, "Error", seconds=7)), current=PENDING)
    assert patch["startedAt"] == timestamp(NOW - timedelta(seconds=7))
    assert patch["durationMs"] == 7000


def test_zero_exit_without_report_is_not_success() -> None:
    patch = observe(pod(phase="Succeeded", state=terminated(0)))
    assert_finished(patch, "Failed", vocabulary.REPORT_MISSING)


def test_oom_killed_wins_over_a_matching_report() -> None:
    patch = observe(
        pod(phase="Failed", state=terminated(137, "OOMKilled"), memory_limit="64Mi"),
        report(exitCode=137, signal=9),
    )
    assert_finished(patch, "Failed", vocabulary.OOM_KILLED)
    assert patch["exitCode"] == 137
    assert patch["message"] == "The sandbox exceeded its memory limit of 64Mi."
    assert patch["stdout"] == "hello\n"  # what it printed before dying is still useful


def test_oom_killed_without_report() -> None:
    patch = observe(pod(phase="Failed", state=terminated(137, "OOMKilled")))
    assert_finished(patch, "Failed", vocabulary.OOM_KILLED)


def test_active_deadline_exceeded() -> None:
    sandbox = pod(phase="Failed", reason="DeadlineExceeded", message="Pod was active on the node longer than allowed")
    patch = observe(sandbox)
    assert_finished(patch, "TimedOut", vocabulary.DEADLINE_EXCEEDED)
    assert patch["message"] == (
        "The pod's activeDeadlineSeconds passed: Pod was active on the node longer than allowed."
    )


def test_evicted() -> None:
    sandbox = pod(
        phase="Failed",
        reason="Evicted",
        message="Pod ephemeral local storage usage exceeds the total limit of containers 128Mi.",
        state=terminated(137, "Error"),
    )
    patch = observe(sandbox)
    assert_finished(patch, "Failed", vocabulary.EVICTED)
    assert "128Mi" in patch["message"]


def test_pod_failed_before_the_container_ran() -> None:
    patch = observe(pod(phase="Failed", message="Pod was rejected: node out of resources"))
    assert_finished(patch, "Failed", vocabulary.POD_FAILED)
    assert patch["message"] == "The pod ended (Failed): Pod was rejected: node out of resources."


@pytest.mark.parametrize("reason", sorted(status.IMAGE_ERROR_REASONS))
def test_image_errors(reason: str) -> None:
    sandbox = pod(phase="Pending", state={"waiting": {"reason": reason, "message": "image not found"}})
    patch = observe(sandbox, current=PENDING)
    assert_finished(patch, "Failed", vocabulary.IMAGE_ERROR)
    assert patch["message"] == f"{reason}: image not found."


def test_pod_being_deleted_before_finishing() -> None:
    patch = observe(pod(state={"running": {"startedAt": "2030-01-02T03:04:00Z"}}, deleting=True))
    assert_finished(patch, "Failed", vocabulary.POD_DELETED)


def test_pod_deleted() -> None:
    patch = status.pod_deleted(RUNNING, NOW, 1)
    ExecutionStatus.model_validate(patch)
    assert_finished(patch, "Failed", vocabulary.POD_DELETED)


def test_sandbox_not_created() -> None:
    patch = status.sandbox_not_created(PENDING, 'pods "x" is forbidden: exceeded quota', NOW, 1)
    assert_finished(patch, "Failed", vocabulary.POD_FAILED)
    assert patch["message"] == 'The sandbox could not be created: pods "x" is forbidden: exceeded quota.'


def test_running_from_pending() -> None:
    sandbox = pod(state={"running": {"startedAt": "2030-01-02T03:04:00Z"}})
    assert observe(sandbox, current=PENDING) == {
        "phase": "Running",
        "startedAt": "2030-01-02T03:04:00Z",
        "podName": "hello-0f1e2d3c",
        "sandbox": "cold",
        "observedGeneration": 1,
    }
    assert status.from_pod(RUNNING, sandbox, None, CONFIG, NOW, 1) is None


def test_a_claimed_warm_pod_runs_since_its_claim_not_since_the_pod_started() -> None:
    """Seen failing with startedAt taken from the container (a pool pod waits minutes for its Execution)."""
    claimed = timestamp(NOW - timedelta(seconds=1))
    sandbox = pod(state={"running": {"startedAt": timestamp(NOW - timedelta(seconds=600))}})
    sandbox["metadata"]["annotations"] = {"codeexec.io/claimed-at": claimed}
    patch = observe(sandbox, current=PENDING)
    assert patch is not None
    assert (patch["startedAt"], patch["sandbox"]) == (claimed, "warm")
    ended = pod(phase="Succeeded", state=terminated(0, seconds=600))
    ended["metadata"]["annotations"] = {"codeexec.io/claimed-at": claimed}
    final = status.from_pod(PENDING, ended, report(exitCode=0), CONFIG, NOW, 1)
    assert final is not None
    assert (final["phase"], final["startedAt"], final["sandbox"]) == ("Succeeded", claimed, "warm")


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "TimedOut", "Rejected"])
def test_terminal_phase_is_final(phase: str) -> None:
    finished = {**RUNNING, "phase": phase}
    for sandbox in (
        pod(phase="Failed", state=terminated(1)),
        pod(state={"running": {}}),
        pod(phase="Pending", state={"waiting": {"reason": "ErrImagePull"}}),
    ):
        assert status.from_pod(finished, sandbox, report(exitCode=1), CONFIG, NOW, 1) is None


def test_waiting_within_the_start_deadline_changes_nothing() -> None:
    sandbox = pod(
        phase="Pending", state={"waiting": {"reason": "ContainerCreating"}}, created=NOW - timedelta(seconds=119)
    )
    assert status.from_pod(PENDING, sandbox, None, CONFIG, NOW, 1) is None


def test_start_timeout() -> None:
    sandbox = pod(
        phase="Pending",
        state={"waiting": {"reason": "ContainerCreating", "message": "sandbox setup"}},
        created=NOW - timedelta(seconds=121),
    )
    patch = observe(sandbox, current=PENDING)
    assert_finished(patch, "Failed", vocabulary.START_TIMEOUT)
    assert patch["message"] == "The pod did not start within 120 seconds: ContainerCreating: sandbox setup."


def test_unschedulable() -> None:
    sandbox = pod(
        phase="Pending",
        created=NOW - timedelta(seconds=121),
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector",
            }
        ],
    )
    patch = observe(sandbox, current=PENDING)
    assert_finished(patch, "Failed", vocabulary.UNSCHEDULABLE)
    assert patch["message"] == (
        "The pod could not be scheduled: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    )


NO_ROOM = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/1 nodes are available: 1 Insufficient cpu.",
}


def test_a_pod_without_room_waits_as_queued_past_the_start_deadline() -> None:
    """A misjudged capacity (another pod took the room) is no failure: the pod waits for the scheduler."""
    sandbox = pod(phase="Pending", created=NOW - timedelta(seconds=500), conditions=[NO_ROOM])
    deadline = NOW + timedelta(seconds=1)
    patch = status.from_pod(PENDING, sandbox, None, CONFIG, NOW, 1, deadline)
    assert patch == {
        "reason": "Queued",
        "message": "waiting for capacity: 0/1 nodes are available: 1 Insufficient cpu.",
        "queuePosition": None,
    }
    assert status.from_pod({**PENDING, **patch}, sandbox, None, CONFIG, NOW, 1, deadline) is None, "written once"
    moment = pod(phase="Pending", conditions=[{**NO_ROOM, "lastTransitionTime": timestamp(NOW - timedelta(seconds=3))}])
    assert status.from_pod(PENDING, moment, None, CONFIG, NOW, 1, deadline) is None, "a moment is not worth a write"


def test_a_pod_without_room_at_the_queue_deadline_fails_with_queue_timeout() -> None:
    sandbox = pod(phase="Pending", created=NOW - timedelta(seconds=30), conditions=[NO_ROOM])
    current = {**PENDING, "reason": "Queued", "message": "waiting for capacity: no room.", "queuePosition": 3}
    patch = status.from_pod(current, sandbox, None, CONFIG, NOW, 1, NOW)
    assert patch is not None
    assert_finished(patch, "Failed", vocabulary.QUEUE_TIMEOUT)
    assert patch["message"].endswith("from creation): waiting for capacity: no room.")
    assert patch["queuePosition"] is None


def test_the_start_deadline_counts_from_scheduling_when_the_pod_waited_for_room() -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": timestamp(NOW - timedelta(seconds=5))}
    sandbox = pod(phase="Pending", created=NOW - timedelta(seconds=300), conditions=[scheduled], state={"waiting": {}})
    assert status.from_pod(PENDING, sandbox, None, CONFIG, NOW, 1) is None
    assert status.from_pod(PENDING, pod(phase="Pending", created=NOW - timedelta(seconds=300)), None, CONFIG, NOW, 1)


def test_running_removes_what_the_queue_wrote() -> None:
    current = {**PENDING, "reason": "Queued", "message": "waiting", "queuePosition": 1}
    sandbox = pod(state={"running": {"startedAt": timestamp(NOW)}})
    patch = observe(sandbox, current=current)
    assert (patch["phase"], patch["reason"], patch["message"], patch["queuePosition"]) == ("Running", None, None, None)
    assert "reason" not in observe(sandbox, current=PENDING)


def test_outputs_are_capped_again_by_the_operator() -> None:
    config = OperatorConfig(max_output_bytes=1024)
    big = report(
        stdout={"text": "é" * 1000, "bytes": 2000, "truncated": False},
        stderr={"text": "e" * 1024, "bytes": 1024, "truncated": False},
        result="r" * 2000,
        logs=[{"level": "log", "time": "t", "message": "m" * 1024}] * 100,
    )
    patch = observe(pod(phase="Succeeded", state=terminated(0)), big, config=config)
    assert patch["stdout"] == "é" * 512
    assert patch["stdoutTruncated"] is True
    assert patch["stdoutBytes"] == 2000
    assert (patch["stderr"], patch["stderrTruncated"]) == ("e" * 1024, False)
    assert "result" not in patch
    assert patch["message"] == (
        "The program exited with code 0: the result (2002 bytes as JSON) exceeds 1024 bytes and was dropped."
    )
    assert len(patch["logs"]) == 64
    assert patch["logsTruncated"] is True


def test_rejected() -> None:
    patch = status.rejected({}, vocabulary.UNKNOWN_LANGUAGE, 'spec.language "cobol" is unknown', NOW, 2)
    ExecutionStatus.model_validate(patch)
    assert (patch["phase"], patch["reason"]) == ("Rejected", "UnknownLanguage")
    assert patch["message"] == 'spec.language "cobol" is unknown'
    assert patch["finishedAt"] == timestamp(NOW)
    assert patch["observedGeneration"] == 2
    accepted, finished = condition(patch, "Accepted"), condition(patch, "Finished")
    assert (accepted["status"], accepted["reason"]) == ("False", "UnknownLanguage")
    assert (finished["status"], finished["reason"]) == ("True", "UnknownLanguage")
    assert "podName" not in patch


def test_missing_runtime_class_is_a_failure_not_a_rejection() -> None:
    patch = status.rejected({}, vocabulary.RUNTIME_CLASS_MISSING, "no gvisor", NOW, 1)
    assert (patch["phase"], patch["reason"]) == ("Failed", "RuntimeClassMissing")


def test_queued_keeps_pending_and_validates() -> None:
    patch = {**status.pending({}, NOW, 1, RESOURCES), **status.queued(4, "waiting for capacity: 2 of 2 running")}
    ExecutionStatus.model_validate(patch)
    assert (patch["phase"], patch["reason"], patch["queuePosition"]) == ("Pending", "Queued", 4)
    assert patch["message"] == "waiting for capacity: 2 of 2 running."


def test_pending() -> None:
    patch = status.pending({}, NOW, 1, RESOURCES)
    ExecutionStatus.model_validate(patch)
    assert (patch["phase"], patch["resources"]) == ("Pending", RESOURCES)
    accepted = condition(patch, "Accepted")
    assert (accepted["status"], accepted["reason"], accepted["lastTransitionTime"]) == (
        "True",
        "Accepted",
        timestamp(NOW),
    )


def test_pending_records_the_resolved_addresses() -> None:
    patch = status.pending({}, NOW, 1, RESOURCES, ["93.184.216.34", "2606:2800:220:1::1"])
    ExecutionStatus.model_validate(patch)
    assert patch["resolvedAddresses"] == ["93.184.216.34", "2606:2800:220:1::1"]
    assert "resolvedAddresses" not in status.pending({}, NOW, 1, RESOURCES)


@pytest.mark.parametrize("reason", [vocabulary.DOMAIN_NOT_ALLOWED, vocabulary.DOMAIN_UNRESOLVABLE])
def test_domain_problems_are_rejections(reason: str) -> None:
    patch = status.rejected({}, reason, 'spec.network.allowedDomains[0] "x.example.com": ...', NOW, 1)
    assert (patch["phase"], patch["reason"]) == ("Rejected", reason)
    assert condition(patch, "Accepted")["status"] == "False"


def test_condition_transition_time_moves_only_when_its_status_changes() -> None:
    again = status.pending(PENDING, NOW, 1, RESOURCES)
    assert condition(again, "Accepted")["lastTransitionTime"] == "2030-01-01T00:00:00Z"
    rejected = status.rejected(PENDING, vocabulary.INVALID_SPEC, "bad", NOW, 1)
    assert condition(rejected, "Accepted")["lastTransitionTime"] == timestamp(NOW)


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (None, Phase.PENDING, True),
        (None, Phase.REJECTED, True),
        (Phase.PENDING, Phase.RUNNING, True),
        (Phase.PENDING, Phase.SUCCEEDED, True),
        (Phase.RUNNING, Phase.TIMED_OUT, True),
        (Phase.RUNNING, Phase.PENDING, False),
        (Phase.RUNNING, Phase.RUNNING, False),
        (Phase.PENDING, Phase.PENDING, False),
        (Phase.SUCCEEDED, Phase.FAILED, False),
        (Phase.FAILED, Phase.RUNNING, False),
        (Phase.REJECTED, Phase.PENDING, False),
    ],
)
def test_phases_only_move_forward(current: str | None, new: str, allowed: bool) -> None:
    assert status.can_transition(current, new) is allowed


def test_ttl() -> None:
    finished = {"phase": "Succeeded", "finishedAt": timestamp(NOW - timedelta(seconds=60))}
    assert status.ttl_expired(finished, 60, NOW)
    assert not status.ttl_expired(finished, 61, NOW)
    assert not status.ttl_expired(finished, None, NOW)
    assert not status.ttl_expired({**finished, "phase": "Running"}, 0, NOW)
    assert not status.ttl_expired({"phase": "Failed"}, 0, NOW)


def test_sandbox_terminated() -> None:
    assert status.sandbox_terminated(pod(phase="Failed", state=terminated(1)))
    assert not status.sandbox_terminated(pod(state={"running": {}}))
    assert not status.sandbox_terminated(pod(phase="Failed"))
