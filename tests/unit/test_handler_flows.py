"""The lifecycle's orchestration, as Kopf's handlers call it, against the fake ClusterApi: restarts and
write conflicts."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest

from codeexec import handlers, lifecycle
from codeexec.api import ApiError
from codeexec.builders import ExecutionRef
from codeexec.config import OperatorConfig
from tests.unit import factories
from tests.unit.fakes import NAME, NAMESPACE, POD_NAME, FakeCluster


@pytest.fixture(autouse=True)
def no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kubernetes Events need a running operator; metrics stay as they are.
    monkeypatch.setattr(lifecycle, "_announce", lambda *_: None)


def start(cluster: FakeCluster, body_status: dict[str, Any] | None = None) -> None:
    """start_execution as Kopf calls it, with an event body whose status may be older than the API's."""
    body = kopf.Body(
        {
            "apiVersion": "codeexec.io/v1alpha1",
            "kind": "Execution",
            "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": factories.UID, "generation": 1},
            "spec": factories.spec(),
            "status": body_status or {},
        }
    )
    memo = kopf.Memo(config=OperatorConfig(), cluster=cluster)
    handlers.start_execution(body=body, memo=memo, logger=logging.getLogger("test"))


def owned_pod(**fields: Any) -> dict[str, Any]:
    pod = factories.pod(**fields)
    pod["metadata"]["labels"] = {"codeexec.io/execution-uid": factories.UID}
    return pod


def test_a_new_execution_gets_its_sandbox() -> None:
    cluster = FakeCluster({})
    start(cluster)
    assert cluster.calls[:2] == ["read_pod", "read_execution"]
    assert [call for call in cluster.calls if call.startswith("create_")] == [
        "create_configmap",
        "create_networkpolicy",
        "create_pod",
    ]
    assert cluster.executions.patches[-1] == {"podName": POD_NAME}


def test_stale_body_of_a_finished_execution_creates_nothing() -> None:
    # After a restart the listing's body says Pending; a pod event has since written the outcome
    # and removed the sandbox.
    cluster = FakeCluster({"phase": "Succeeded", "podName": POD_NAME})
    start(cluster, body_status={"phase": "Pending"})
    assert cluster.calls == ["read_pod", "read_execution"]
    assert cluster.executions.patches == []


def test_pod_created_before_a_restart_is_adopted_not_created_again() -> None:
    # The operator died between creating the pod and recording its name.
    cluster = FakeCluster({"phase": "Pending"}, pod=owned_pod(state=factories.terminated(0)))
    start(cluster, body_status={"phase": "Pending"})
    assert not [call for call in cluster.calls if call.startswith("create_")]
    assert cluster.executions.patches == [{"podName": POD_NAME}]


def test_pod_of_another_execution_under_the_name_is_not_adopted() -> None:
    stranger = factories.pod()
    stranger["metadata"]["labels"] = {"codeexec.io/execution-uid": "someone-else"}
    cluster = FakeCluster({"phase": "Pending"}, pod=stranger)
    with pytest.raises(kopf.TemporaryError):
        start(cluster, body_status={"phase": "Pending"})
    assert cluster.executions.patches == []


def test_sync_retries_a_conflicting_status_patch_on_a_fresh_read() -> None:
    cluster = FakeCluster({"phase": "Running", "podName": POD_NAME}, pod=None)
    cluster.executions.conflicts = 1
    execution = ExecutionRef(NAMESPACE, NAME, factories.UID)
    pod = owned_pod(phase="Succeeded", state=factories.terminated(0))
    lifecycle.sync_with_pod(cluster, OperatorConfig(), execution, pod)
    assert cluster.calls.count("read_execution") == 2
    assert [patch["phase"] for patch in cluster.executions.patches] == ["Succeeded"]
    assert cluster.calls[-1] == "delete_sandbox"


def test_sync_gives_up_after_repeated_conflicts() -> None:
    cluster = FakeCluster({"phase": "Running", "podName": POD_NAME}, pod=None)
    cluster.executions.conflicts = lifecycle.SYNC_ATTEMPTS
    execution = ExecutionRef(NAMESPACE, NAME, factories.UID)
    pod = owned_pod(phase="Succeeded", state=factories.terminated(0))
    with pytest.raises(ApiError):
        lifecycle.sync_with_pod(cluster, OperatorConfig(), execution, pod)
    assert cluster.executions.patches == []
    assert "delete_sandbox" not in cluster.calls
