"""The warm path's pure parts: what fits a pool pod, which pods may be offered, the claim patch, the request."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from codeexec import warm
from codeexec.builders import ExecutionRef
from codeexec.config import OperatorConfig
from codeexec.egress import PinnedHost
from codeexec.validation import Plan, plan_execution
from tests.unit import factories
from tests.unit.factories import NOW, timestamp

EXECUTION = ExecutionRef("team", "hello", factories.UID)
OWNER = {"apiVersion": "codeexec.io/v1alpha1", "kind": "Execution", "name": "hello", "uid": factories.UID}


def plan(**spec: Any) -> Plan:
    planned = plan_execution(factories.spec(**spec), factories.RUNTIMES, OperatorConfig(), True)
    assert isinstance(planned, Plan)
    return planned


def idle(
    name: str, *, created: str, phase: str = "Running", ready: bool = True, deleting: bool = False
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "creationTimestamp": created, "resourceVersion": "3"}
    if deleting:
        metadata["deletionTimestamp"] = created
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": metadata, "status": {"phase": phase, "startTime": created, "conditions": conditions}}


def test_fits_only_what_a_pre_started_fenced_pod_honours() -> None:
    assert warm.fits(plan(), ())
    assert warm.fits(plan(env=[{"name": "GREETING", "value": "hi"}]), ())
    assert not warm.fits(plan(env=[{"name": "PYTHONPATH", "value": "/tmp"}]), ())
    assert not warm.fits(plan(), (PinnedHost("example.com", ("93.184.215.14",), None),))
    # A pool pod is fenced deny-all: its code could not reach the broker.
    assert not warm.fits(plan(bindings=["notes"]), ())


def test_only_ready_running_pods_not_being_deleted_are_offered_oldest_first() -> None:
    pods = [
        idle("young", created="2030-01-02T03:00:02Z"),
        idle("old", created="2030-01-02T03:00:01Z"),
        idle("starting", created="2030-01-02T03:00:00Z", ready=False),
        idle("ended", created="2030-01-02T03:00:00Z", phase="Failed"),
        idle("going", created="2030-01-02T03:00:00Z", deleting=True),
    ]
    assert [pod["metadata"]["name"] for pod in warm.ready_candidates(pods)] == ["old", "young"]


def test_the_claim_is_conditional_labels_and_owns_the_pod_and_sets_the_deadline_from_now() -> None:
    """activeDeadlineSeconds counts from the pod's start: a pod idle 100 s gets 100 + timeout + grace."""
    config = OperatorConfig()
    pod = idle("py-a", created=timestamp(NOW - timedelta(seconds=100)))
    patch = warm.claim_patch(pod, EXECUTION, OWNER, plan(timeoutSeconds=7), config, NOW)
    assert patch["metadata"]["resourceVersion"] == "3"
    assert patch["metadata"]["labels"]["codeexec.io/execution-uid"] == factories.UID
    assert patch["metadata"]["labels"]["codeexec.io/execution"] == "hello"
    assert patch["metadata"]["ownerReferences"] == [OWNER]
    assert patch["metadata"]["annotations"] == {"codeexec.io/claimed-at": timestamp(NOW)}
    assert patch["spec"] == {"activeDeadlineSeconds": 100 + 7 + config.active_deadline_grace_seconds}


def test_the_request_carries_what_the_cold_path_mounts() -> None:
    planned = plan(code="print(input)", input={"n": 1}, stdin="line\n", args=["-v"], env=[{"name": "A", "value": "b"}])
    line = warm.request(planned)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "fileName": "main.py",
        "code": "print(input)",
        "input": {"n": 1},
        "stdin": "line\n",
        "env": {"A": "b"},
        "args": ["-v"],
        "timeoutSeconds": 30,
    }
