"""What the operator needs from the Kubernetes API, as Protocols (k8s.py implements them, the tests fake them)."""

from __future__ import annotations

from typing import Any, Protocol

from codeexec.report import Report

# Objects travel as the API's JSON: plain dicts, no client models.
Body = dict[str, Any]

BAD_REQUEST = 400
NOT_FOUND = 404
CONFLICT = 409


class ApiError(Exception):
    """A failed API call; `status` is the HTTP status, None when the server was not reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Executions(Protocol):
    """The Execution resources: the operator reads them, writes their status and deletes expired ones."""

    def read(self, namespace: str, name: str) -> Body | None:
        """None when it does not exist."""
        ...

    def patch_status(self, namespace: str, name: str, status: Body, resource_version: str | None = None) -> None:
        """Merge-patches .status. With a resourceVersion the patch fails (409) if the
        Execution changed since it was read: a finished outcome is never overwritten."""
        ...

    def delete(self, namespace: str, name: str) -> None:
        """Deleting one already gone is fine."""
        ...


class Sandboxes(Protocol):
    """The objects made for an Execution (ConfigMap, Secret, NetworkPolicy, Pod), all named alike, and the pod's
    log."""

    def create(self, child: Body) -> Body:
        """Idempotent: an object of that kind and name already there is returned instead."""
        ...

    def read_pod(self, namespace: str, name: str) -> Body | None:
        """None when it does not exist."""
        ...

    def find_pod(self, namespace: str, execution_uid: str) -> Body | None:
        """The pod labelled as the Execution's sandbox (created for it, or a warm pod claimed for it); None
        when there is none."""
        ...

    def warm_pods(self, namespace: str, template_hash: str) -> list[Body]:
        """The unclaimed pool pods of that template in the namespace, as the API has them now."""
        ...

    def claim(self, namespace: str, name: str, patch: Body) -> Body:
        """Merge-patches a pool pod; the patch carries the resourceVersion read, so a pod changed since
        (claimed by another) fails with 409."""
        ...

    def deliver(self, namespace: str, name: str, request: bytes) -> bool:
        """Writes the request to the sandbox container's stdin through pods/attach; True once the runner
        acknowledged it (contract.WARM_ACCEPTED), False when it did not in time (it had one already, or died)."""
        ...

    def read_report(self, namespace: str, pod_name: str) -> Report | None:
        """The runner's report at the end of the sandbox container's log; None when there is
        none, or no log any more."""
        ...

    def delete(self, namespace: str, name: str) -> None:
        """Deletes the pod, ConfigMap, Secret and NetworkPolicy named `name`; missing ones are fine."""
        ...


class ClusterFacts(Protocol):
    """What the cluster offers, what runs there, and where its own networks are: read for planning, the
    queue's capacity and pinning."""

    def list_runtimes(self) -> list[Body]: ...

    def runtime_class_exists(self, name: str) -> bool: ...

    def api_service(self) -> Body:
        """The `kubernetes` Service in `default`, which sandboxes must never reach."""
        ...

    def network_objects(self) -> tuple[list[Body], list[Body]]:
        """Every Node and the EndpointSlices of the `kubernetes` Service: the addresses a domain must
        never be pinned to, beyond the configured cluster ranges."""
        ...

    def service_cidrs(self) -> list[Body]:
        """The ServiceCIDR objects, the ranges Service IPs come from (none before Kubernetes 1.33)."""
        ...

    def pods(self) -> list[Body]:
        """Every pod in the cluster that has not ended, with just what the queue's capacity needs (namespace,
        labels, node, phase, resources); may be some seconds old."""
        ...

    def sandbox_bindings(self, namespace: str) -> list[Body]:
        """The SandboxBindings of a namespace, as the API has them now (an Execution may name one made a moment
        before it)."""
        ...

    def broker_service(self, namespace: str, name: str) -> Body | None:
        """The broker's Service, as the API has it now; None when it does not exist."""
        ...


class WarmPools(Protocol):
    """The WarmPool resources and what keeps them: their pods and the namespace's pool NetworkPolicy."""

    def read(self, namespace: str, name: str) -> Body | None:
        """None when it does not exist."""
        ...

    def patch_status(self, namespace: str, name: str, status: Body) -> None:
        """Merge-patches .status."""
        ...

    def list_pods(self, namespace: str, label_selector: str) -> list[Body]:
        """The pods the selector matches, as the API has them now (no cache: a pool never counts a pod twice)."""
        ...

    def create_pod(self, pod: Body) -> Body:
        """Creates a pod (named by the API server from its generateName)."""
        ...

    def delete_pod(self, namespace: str, name: str, resource_version: str) -> bool:
        """Deletes the pod only if it is still that version (a precondition): False when it changed meanwhile
        (e.g. an Execution claimed it) or is gone."""
        ...

    def ensure_networkpolicy(self, policy: Body) -> None:
        """Creates the NetworkPolicy unless one of its name exists."""
        ...


class SandboxBindings(Protocol):
    """The SandboxBinding resources, whose status the operator keeps, and whether a binding's Secret key exists."""

    def read(self, namespace: str, name: str) -> Body | None:
        """None when it does not exist."""
        ...

    def patch_status(self, namespace: str, name: str, status: Body) -> None:
        """Merge-patches .status; a binding gone meanwhile is fine."""
        ...

    def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        """The data keys of a Secret (never its values); None when it does not exist."""
        ...


class ClusterApi(Protocol):
    """Everything the Execution lifecycle uses, by job."""

    @property
    def executions(self) -> Executions: ...

    @property
    def sandboxes(self) -> Sandboxes: ...

    @property
    def facts(self) -> ClusterFacts: ...
