"""The one fake of the ClusterApi for unit tests: Executions, their pods and the cluster's facts; records every call.
Also the fakes of the WarmPools and SandboxBindings APIs."""

from __future__ import annotations

import copy
from typing import Any

from codeexec.api import CONFLICT, NOT_FOUND, ApiError, Body, ClusterApi, SandboxBindings, WarmPools
from codeexec.report import Report
from codeexec.vocabulary import EXECUTION_UID_LABEL, POOL_LABEL, TEMPLATE_HASH_LABEL
from tests.unit import factories

NAMESPACE, NAME = "team", "hello"
POD_NAME = f"{NAME}-{factories.UID[:8]}"
PYTHON_RUNTIME = {"metadata": {"name": "python"}, "spec": factories.PYTHON.model_dump(by_alias=True, exclude_none=True)}
API_SERVICE = {"spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 443}]}}
CREATED = "2030-01-02T03:00:00Z"
BROKER_SERVICE = "codeexec-system/code-exec-broker"
BROKER = {
    "metadata": {"namespace": "codeexec-system", "name": "code-exec-broker"},
    "spec": {
        "clusterIP": "10.96.0.57",
        "ports": [{"name": "api", "port": 8080, "targetPort": 8080, "protocol": "TCP"}],
        "selector": {"app.kubernetes.io/instance": "code-exec", "app.kubernetes.io/component": "broker"},
    },
}
# One Ready node with room for four default sandboxes (500m, 256Mi each).
NODE = {
    "metadata": {"name": "node-1"},
    "status": {"allocatable": {"cpu": "2", "memory": "4Gi"}, "conditions": [{"type": "Ready", "status": "True"}]},
}


def execution(name: str = NAME, uid: str = factories.UID, namespace: str = NAMESPACE, **status: Any) -> Body:
    """An Execution as the API returns it."""
    return {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "Execution",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "1",
            "generation": 1,
            "creationTimestamp": CREATED,
        },
        "spec": factories.spec(),
        "status": status,
    }


class FakeExecutions:
    """Holds Executions by namespace and name (`execution`: the first one); applies status patches, and
    fails those with a resourceVersion with 409 while `conflicts` lasts."""

    def __init__(self, calls: list[str], execution_status: Body) -> None:
        self._calls = calls
        self.items: dict[tuple[str, str], Body] = {}
        self.add(execution(**execution_status))
        self.patches: list[Body] = []
        self.conflicts = 0

    @property
    def execution(self) -> Body:
        return self.items[NAMESPACE, NAME]

    def add(self, item: Body) -> None:
        self.items[item["metadata"]["namespace"], item["metadata"]["name"]] = item

    def read(self, namespace: str, name: str) -> Body | None:
        self._calls.append("read_execution")
        return self.items.get((namespace, name))

    def patch_status(self, namespace: str, name: str, status: Body, resource_version: str | None = None) -> None:
        self._calls.append("patch_execution_status")
        if resource_version is not None and self.conflicts:
            self.conflicts -= 1
            raise ApiError("409 Conflict", CONFLICT)
        self.patches.append(status)
        current = self.items[namespace, name].setdefault("status", {})
        for key, value in status.items():  # a merge patch: null deletes
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value

    def delete(self, namespace: str, name: str) -> None:
        self._calls.append("delete_execution")


class FakeSandboxes:
    """Holds pods by namespace and name (`pod`: the first Execution's); creating a pod stores it, or raises
    `refusal` while it is set; `created` keeps every object created, by kind."""

    def __init__(self, calls: list[str], pod: Body | None) -> None:
        self._calls = calls
        self.pods: dict[tuple[str, str], Body] = {}
        self.created: dict[str, Body] = {}
        if pod is not None:
            self.pods[NAMESPACE, POD_NAME] = pod
        self.refusal: ApiError | None = None
        self.deliveries: list[tuple[str, bytes]] = []  # (pod name, request) handed to warm pods
        self.acknowledge = True  # what deliver answers: the runner acknowledged the request

    @property
    def pod(self) -> Body | None:
        return self.pods.get((NAMESPACE, POD_NAME))

    def create(self, child: Body) -> Body:
        self._calls.append(f"create_{child['kind'].lower()}")
        self.created[child["kind"]] = child
        if child["kind"] == "Pod":
            if self.refusal is not None:
                raise self.refusal
            # As k8s.py's idempotent create: a pod of that name already there is returned instead.
            return self.pods.setdefault((child["metadata"]["namespace"], child["metadata"]["name"]), child)
        return child

    def read_pod(self, namespace: str, name: str) -> Body | None:
        self._calls.append("read_pod")
        return self.pods.get((namespace, name))

    def find_pod(self, namespace: str, execution_uid: str) -> Body | None:
        self._calls.append("find_pod")
        found = [
            pod
            for (pod_namespace, _), pod in self.pods.items()
            if pod_namespace == namespace and _labels(pod).get(EXECUTION_UID_LABEL) == execution_uid
        ]
        return found[0] if found else None

    def warm_pods(self, namespace: str, template_hash: str) -> list[Body]:
        self._calls.append("list_warm_pods")
        return [
            pod
            for (pod_namespace, _), pod in self.pods.items()
            if pod_namespace == namespace
            and POOL_LABEL in _labels(pod)
            and EXECUTION_UID_LABEL not in _labels(pod)
            and _labels(pod).get(TEMPLATE_HASH_LABEL) == template_hash
        ]

    def claim(self, namespace: str, name: str, patch: Body) -> Body:
        """Applies the merge patch to metadata and spec, if the pod still has the patch's resourceVersion."""
        self._calls.append("claim_pod")
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise ApiError("404 Not Found", NOT_FOUND)
        metadata = pod["metadata"]
        if patch["metadata"]["resourceVersion"] != metadata.get("resourceVersion"):
            raise ApiError("409 Conflict", CONFLICT)
        for key in ("labels", "annotations"):
            metadata[key] = {**(metadata.get(key) or {}), **patch["metadata"][key]}
        metadata["ownerReferences"] = patch["metadata"]["ownerReferences"]
        metadata["resourceVersion"] = str(int(metadata["resourceVersion"]) + 1)
        pod["spec"] = {**pod.get("spec", {}), **patch["spec"]}
        return pod

    def deliver(self, namespace: str, name: str, request: bytes) -> bool:
        self._calls.append("deliver")
        self.deliveries.append((name, request))
        return self.acknowledge

    def read_report(self, namespace: str, pod_name: str) -> Report | None:
        self._calls.append("read_report")
        return factories.report()

    def delete(self, namespace: str, name: str) -> None:
        self._calls.append("delete_sandbox")
        self.pods.pop((namespace, name), None)


def sandbox_binding(name: str, namespace: str = NAMESPACE, **db: Any) -> Body:
    """A SandboxBinding as the API returns it (a SQLite one unless `db` says otherwise)."""
    return {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "SandboxBinding",
        "metadata": {"name": name, "namespace": namespace, "generation": 1, "resourceVersion": "1"},
        "spec": {"db": db},
    }


class FakeClusterFacts:
    """The Python Runtime (or `runtimes_error` when listing), a RuntimeClass, one node, other pods, the
    cluster's networks, SandboxBindings and the broker's Service; counts the reads of network objects, the
    listings of SandboxBindings and the reads of the broker's Service."""

    def __init__(self, runtimes: list[Body], runtimes_error: ApiError | None) -> None:
        self.runtimes = runtimes
        self.runtimes_error = runtimes_error
        self.nodes: list[Body] = [NODE]
        self.other_pods: list[Body] = []
        self.api_endpoint_slices: list[Body] = []
        self.service_cidr_objects: list[Body] = []
        self.network_reads = 0
        self.bindings: list[Body] = []
        self.binding_listings: list[str] = []  # the namespace of each listing
        self.broker: Body | None = BROKER
        self.broker_reads: list[tuple[str, str]] = []

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

    def pods(self) -> list[Body]:
        return self.other_pods

    def sandbox_bindings(self, namespace: str) -> list[Body]:
        self.binding_listings.append(namespace)
        return [item for item in self.bindings if item["metadata"]["namespace"] == namespace]

    def broker_service(self, namespace: str, name: str) -> Body | None:
        self.broker_reads.append((namespace, name))
        return self.broker


class FakeCluster:
    """The ClusterApi of a few Executions; `calls` lists the recorded calls of all parts in order."""

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


def _labels(pod: Body) -> dict[str, str]:
    labels: dict[str, str] = pod.get("metadata", {}).get("labels") or {}
    return labels


class FakeWarmPools:
    """One WarmPool (`pool`) and its pods by name; creating a pod names it (generateName) and stores it, or
    raises `refusal` while it is set; a delete whose resourceVersion is not the pod's current one fails
    (returns False) as the API's precondition does."""

    def __init__(self, calls: list[str], pool: Body) -> None:
        self._calls = calls
        self.pool: Body | None = pool
        self.pods: dict[str, Body] = {}
        self.policies: list[Body] = []
        self.refusal: ApiError | None = None
        self.status_patches: list[Body] = []

    def read(self, namespace: str, name: str) -> Body | None:
        self._calls.append("read_pool")
        return self.pool

    def patch_status(self, namespace: str, name: str, status: Body) -> None:
        self._calls.append("patch_pool_status")
        assert self.pool is not None
        self.status_patches.append(status)
        self.pool["status"] = {**self.pool.get("status", {}), **status}

    def list_pods(self, namespace: str, label_selector: str) -> list[Body]:
        self._calls.append("list_pool_pods")
        key, value = label_selector.split("=")
        return [pod for pod in self.pods.values() if _labels(pod).get(key) == value]

    def create_pod(self, pod: Body) -> Body:
        self._calls.append("create_pool_pod")
        if self.refusal is not None:
            raise self.refusal
        name = f"{pod['metadata']['generateName']}{len(self.pods):05d}"
        created = copy.deepcopy(pod)  # as the API server stores it: nothing shared with the caller's dict
        created["metadata"] |= {"name": name, "resourceVersion": "1"}
        self.pods[name] = created
        return created

    def delete_pod(self, namespace: str, name: str, resource_version: str) -> bool:
        self._calls.append("delete_pool_pod")
        pod = self.pods.get(name)
        if pod is None or pod["metadata"]["resourceVersion"] != resource_version:
            return False
        del self.pods[name]
        return True

    def ensure_networkpolicy(self, policy: Body) -> None:
        self._calls.append("ensure_networkpolicy")
        if policy not in self.policies:
            self.policies.append(policy)


_IMPLEMENTS_POOLS: type[WarmPools] = FakeWarmPools


class FakeSandboxBindings:
    """SandboxBindings by (namespace, name) and Secrets' keys; status patches are merged and recorded."""

    def __init__(self, *items: Body) -> None:
        self.items = {(item["metadata"]["namespace"], item["metadata"]["name"]): item for item in items}
        self.secrets: dict[tuple[str, str], frozenset[str]] = {}
        self.patches: list[tuple[str, Body]] = []  # (binding name, status patch)
        self.reads: list[str] = []

    def read(self, namespace: str, name: str) -> Body | None:
        self.reads.append(name)
        return self.items.get((namespace, name))

    def patch_status(self, namespace: str, name: str, status: Body) -> None:
        self.patches.append((name, status))
        item = self.items.get((namespace, name))
        if item is not None:
            item["status"] = {**item.get("status", {}), **status}

    def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        return self.secrets.get((namespace, name))


_IMPLEMENTS_BINDINGS: type[SandboxBindings] = FakeSandboxBindings
