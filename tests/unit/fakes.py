"""The one fake of the ClusterApi for unit tests: one Execution, its pod and the cluster's facts; records every call."""

from __future__ import annotations

from codeexec.api import CONFLICT, ApiError, Body, ClusterApi
from codeexec.report import Report
from tests.unit import factories

NAMESPACE, NAME = "team", "hello"
POD_NAME = f"{NAME}-{factories.UID[:8]}"
PYTHON_RUNTIME = {"metadata": {"name": "python"}, "spec": factories.PYTHON.model_dump(by_alias=True, exclude_none=True)}
API_SERVICE = {"spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 443}]}}


class FakeExecutions:
    """Holds one Execution; status patches with a resourceVersion fail with 409 while `conflicts` lasts."""

    def __init__(self, calls: list[str], execution_status: Body) -> None:
        self._calls = calls
        self.execution: Body = {
            "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": factories.UID, "resourceVersion": "1"},
            "spec": factories.spec(),
            "status": execution_status,
        }
        self.patches: list[Body] = []
        self.conflicts = 0

    def read(self, namespace: str, name: str) -> Body | None:
        self._calls.append("read_execution")
        return self.execution

    def patch_status(self, namespace: str, name: str, status: Body, resource_version: str | None = None) -> None:
        self._calls.append("patch_execution_status")
        if resource_version is not None and self.conflicts:
            self.conflicts -= 1
            raise ApiError("409 Conflict", CONFLICT)
        self.patches.append(status)

    def delete(self, namespace: str, name: str) -> None:
        self._calls.append("delete_execution")


class FakeSandboxes:
    """Holds the sandbox pod (None: there is none); creating returns what it was given."""

    def __init__(self, calls: list[str], pod: Body | None) -> None:
        self._calls = calls
        self.pod = pod

    def create(self, child: Body) -> Body:
        self._calls.append(f"create_{child['kind'].lower()}")
        return child

    def read_pod(self, namespace: str, name: str) -> Body | None:
        self._calls.append("read_pod")
        return self.pod

    def read_report(self, namespace: str, pod_name: str) -> Report | None:
        self._calls.append("read_report")
        return factories.report()

    def delete(self, namespace: str, name: str) -> None:
        self._calls.append("delete_sandbox")


class FakeClusterFacts:
    """The Python Runtime (or `runtimes_error` when listing), a RuntimeClass, and the cluster's networks;
    counts the reads of network objects."""

    def __init__(self, runtimes: list[Body], runtimes_error: ApiError | None) -> None:
        self.runtimes = runtimes
        self.runtimes_error = runtimes_error
        self.nodes: list[Body] = []
        self.api_endpoint_slices: list[Body] = []
        self.service_cidr_objects: list[Body] = []
        self.network_reads = 0

    def list_runtimes(self) -> list[Body]:
        if self.runtimes_error is not None:
            raise self.runtimes_error
        return self.runtimes

    def runtime_class_exists(self, name: str) -> bool:
        return True

    def api_service(self) -> Body:
        return API_SERVICE

    def network_objects(self) -> tuple[list[Body], list[Body]]:
        self.network_reads += 1
        return self.nodes, self.api_endpoint_slices

    def service_cidrs(self) -> list[Body]:
        return self.service_cidr_objects


class FakeCluster:
    """The ClusterApi of one Execution; `calls` lists the recorded calls of all parts in order."""

    def __init__(
        self,
        execution_status: Body | None = None,
        pod: Body | None = None,
        *,
        runtimes: list[Body] | None = None,
        runtimes_error: ApiError | None = None,
    ) -> None:
        self.calls: list[str] = []
        self.executions = FakeExecutions(self.calls, execution_status or {})
        self.sandboxes = FakeSandboxes(self.calls, pod)
        self.facts = FakeClusterFacts([PYTHON_RUNTIME] if runtimes is None else runtimes, runtimes_error)


# mypy checks here that the fake offers everything the lifecycle uses, as the real Cluster does.
_IMPLEMENTS: type[ClusterApi] = FakeCluster
