"""The handlers' orchestration against a recording fake of k8s.Cluster: restarts and write conflicts."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest

from codeexec import handlers
from codeexec.builders import ExecutionRef
from codeexec.config import OperatorConfig
from codeexec.k8s import CONFLICT, ApiError
from tests.unit import factories

NAMESPACE, NAME = "team", "hello"
POD_NAME = f"{NAME}-{factories.UID[:8]}"
RUNTIME = {"metadata": {"name": "python"}, "spec": factories.PYTHON.model_dump(by_alias=True, exclude_none=True)}
API_SERVICE = {"spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 443}]}}


class FakeCluster:
    """The Cluster methods the handlers call; records every call, holds one Execution and its pod."""

    def __init__(self, execution_status: dict[str, Any], pod: dict[str, Any] | None = None) -> None:
        self.execution: dict[str, Any] = {
            "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": factories.UID, "resourceVersion": "1"},
            "spec": factories.spec(),
            "status": execution_status,
        }
        self.pod = pod
        self.calls: list[str] = []
        self.patches: list[dict[str, Any]] = []
        self.conflicts = 0  # status patches with a resourceVersion that fail with 409 first

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("read_pod")
        return self.pod

    def read_execution(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append("read_execution")
        return self.execution

    def patch_execution_status(
        self, namespace: str, name: str, patch: dict[str, Any], resource_version: str | None = None
    ) -> None:
        self.calls.append("patch_execution_status")
        if resource_version is not None and self.conflicts:
            self.conflicts -= 1
            raise ApiError("409 Conflict", CONFLICT)
        self.patches.append(patch)

    def list_runtimes(self) -> list[dict[str, Any]]:
        return [RUNTIME]

    def runtime_class_exists(self, name: str) -> bool:
        return True

    def api_service(self) -> dict[str, Any]:
        return API_SERVICE

    def _create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(f"create_{kind}")
        return body

    def create_configmap(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("configmap", body)

    def create_networkpolicy(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("networkpolicy", body)

    def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("pod", body)

    def read_report(self, namespace: str, pod_name: str) -> Any:
        self.calls.append("read_report")
        return factories.report()

    def delete_sandbox(self, namespace: str, name: str) -> None:
        self.calls.append("delete_sandbox")


@pytest.fixture(autouse=True)
def no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kubernetes Events need a running operator; metrics stay as they are.
    monkeypatch.setattr(handlers, "_announce", lambda *_: None)


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
    assert cluster.patches[-1] == {"podName": POD_NAME}


def test_stale_body_of_a_finished_execution_creates_nothing() -> None:
    # After a restart the listing's body says Pending; a pod event has since written the outcome
    # and removed the sandbox.
    cluster = FakeCluster({"phase": "Succeeded", "podName": POD_NAME})
    start(cluster, body_status={"phase": "Pending"})
    assert cluster.calls == ["read_pod", "read_execution"]
    assert cluster.patches == []


def test_pod_created_before_a_restart_is_adopted_not_created_again() -> None:
    # The operator died between creating the pod and recording its name.
    cluster = FakeCluster({"phase": "Pending"}, pod=owned_pod(state=factories.terminated(0)))
    start(cluster, body_status={"phase": "Pending"})
    assert not [call for call in cluster.calls if call.startswith("create_")]
    assert cluster.patches == [{"podName": POD_NAME}]


def test_pod_of_another_execution_under_the_name_is_not_adopted() -> None:
    stranger = factories.pod()
    stranger["metadata"]["labels"] = {"codeexec.io/execution-uid": "someone-else"}
    cluster = FakeCluster({"phase": "Pending"}, pod=stranger)
    with pytest.raises(kopf.TemporaryError):
        start(cluster, body_status={"phase": "Pending"})
    assert cluster.patches == []


def test_sync_retries_a_conflicting_status_patch_on_a_fresh_read() -> None:
    cluster = FakeCluster({"phase": "Running", "podName": POD_NAME}, pod=None)
    cluster.conflicts = 1
    execution = ExecutionRef(NAMESPACE, NAME, factories.UID)
    pod = owned_pod(phase="Succeeded", state=factories.terminated(0))
    handlers._sync_with_pod(cluster, OperatorConfig(), execution, pod)  # type: ignore[arg-type]
    assert cluster.calls.count("read_execution") == 2
    assert [patch["phase"] for patch in cluster.patches] == ["Succeeded"]
    assert cluster.calls[-1] == "delete_sandbox"


def test_sync_gives_up_after_repeated_conflicts() -> None:
    cluster = FakeCluster({"phase": "Running", "podName": POD_NAME}, pod=None)
    cluster.conflicts = handlers.SYNC_ATTEMPTS
    execution = ExecutionRef(NAMESPACE, NAME, factories.UID)
    pod = owned_pod(phase="Succeeded", state=factories.terminated(0))
    with pytest.raises(ApiError):
        handlers._sync_with_pod(cluster, OperatorConfig(), execution, pod)  # type: ignore[arg-type]
    assert cluster.patches == []
    assert "delete_sandbox" not in cluster.calls
