"""The ClusterApi over the official Kubernetes client (the only module doing API I/O): one small class per job."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.stream import stream

from codeexec.api import BAD_REQUEST, CONFLICT, NOT_FOUND, ApiError, Body, ClusterApi, SandboxBindings, WarmPools
from codeexec.models import GROUP, VERSION
from codeexec.report import Report, ReportScanner
from codeexec.vocabulary import EXECUTION_UID_LABEL, POOL_LABEL, SANDBOX_CONTAINER, TEMPLATE_HASH_LABEL
from codeexec_runner import contract

# (connect, read) seconds: a request to an unresponsive API server must not hang a handler.
REQUEST_TIMEOUT = (5.0, 30.0)
LOG_CHUNK_BYTES = 64 * 1024
# How long a warm sandbox's runner may take to acknowledge its request on the attach stream.
DELIVERY_TIMEOUT_SECONDS = 10.0
# The API server's Service, which sandboxes must never reach (the isolation probe).
API_SERVICE = ("default", "kubernetes")
# Nodes and the API server's addresses change rarely; Executions can come by the hundred.
NETWORK_FACTS_TTL_SECONDS = 30.0
# The pods listing of the queue's capacity: a pod it misses makes the scheduler say Insufficient (the sandbox
# waits as Queued); one it still shows after it ended holds the queue back, so it is kept briefly.
PODS_TTL_SECONDS = 5.0

# Pods whose requests the scheduler still counts.
UNENDED_PODS = "status.phase!=Succeeded,status.phase!=Failed"

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


# Error translation and the request shapes every part uses.


def _api_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Turns the client's exceptions into ApiError, so callers need not know the client."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except ApiException as error:
            raise ApiError(_describe(error), error.status) from error
        except urllib3.exceptions.HTTPError as error:
            raise ApiError(f"{method.__name__}: {error}") from error

    return wrapper


def _describe(error: ApiException) -> str:
    """The API server's own message (e.g. which quota or policy refused), else the HTTP reason."""
    try:
        message = json.loads(error.body or "")["message"]
    except (ValueError, KeyError, TypeError):
        return f"{error.status} {error.reason}"
    return f"{error.status} {error.reason}: {message}"


def _request(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Body:
    # Every call uses _preload_content=False: plain dicts in and out, no client models.
    response = call(*args, **kwargs, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
    body: Body = json.loads(response.data)
    return body


def _send(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """A request whose answer is not needed. The answer is read all the same: an unread one keeps its
    connection out of the pool, and the next request pays for a new TLS connection (42 ms instead of 6 ms
    measured on the 2-core dev node, in the middle of an Execution's start)."""
    call(*args, **kwargs, _preload_content=False, _request_timeout=REQUEST_TIMEOUT).drain_conn()


def merge_patch_drops_nulls(status: Body) -> bool:
    """Whether a JSON merge patch of `status` would lose part of the code's result: merge patches read a null
    object member as "remove this key", so `{"a": null}` returned by the code would be stored as `{}`."""
    return _has_null_member(status.get("result"))


def _has_null_member(value: Any) -> bool:
    if isinstance(value, dict):
        return any(member is None or _has_null_member(member) for member in value.values())
    if isinstance(value, list):
        return any(_has_null_member(item) for item in value)
    return False


def status_json_patch(status: Body, resource_version: str | None) -> list[Body]:
    """The JSON Patch writing `status` key by key into an existing status: values (the result) are stored as
    given, nulls included. A null for another field removes it like a merge patch does: the API server prunes a
    null it has no schema room for. Only for Executions that already have a status (every write of a result)."""
    ops: list[Body] = []
    if resource_version is not None:
        # Like a merge patch's metadata.resourceVersion: the API server answers 409 Conflict if it moved on.
        ops.append({"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version})
    ops.extend({"op": "add", "path": f"/status/{key}", "value": value} for key, value in status.items())
    return ops


def _items(call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Body]:
    items: list[Body] = _request(call, *args, **kwargs).get("items", [])
    return items


def _read_if_present(read: Callable[..., Any], *args: str) -> Body | None:
    """None when the object does not exist (404)."""
    try:
        return _request(read, *args)
    except ApiException as error:
        if error.status == NOT_FOUND:
            return None
        raise


def _delete_if_present(delete: Callable[..., Any], *args: str) -> None:
    """Background delete; an object already gone (404) is what was wanted anyway."""
    try:
        _send(delete, *args, propagation_policy="Background")
    except ApiException as error:
        if error.status != NOT_FOUND:
            raise


class TtlCache:
    """Values loaded at most once per `ttl_seconds` each, shared by the handlers' threads."""

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl_seconds = ttl_seconds
        self._entries: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self._ttl_seconds:
            return cast(T, entry[1])
        value = load()  # outside the lock: a slow API call must not hold up other handlers
        with self._lock:
            self._entries[key] = (now, value)
        return value


def _capacity_view(pod: Body) -> Body:
    """The parts of a pod the queue's capacity reads: a cached listing of a big cluster stays small."""
    metadata, spec = pod["metadata"], pod.get("spec", {})
    return {
        "metadata": {"namespace": metadata.get("namespace"), "labels": metadata.get("labels") or {}},
        "spec": {
            "nodeName": spec.get("nodeName"),
            "overhead": spec.get("overhead"),
            "containers": [{"resources": c.get("resources") or {}} for c in spec.get("containers") or []],
            "initContainers": [{"resources": c.get("resources") or {}} for c in spec.get("initContainers") or []],
        },
        "status": {"phase": pod.get("status", {}).get("phase")},
    }


class KubeExecutions:
    """The Execution custom resources."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)

    @_api_errors
    def read(self, namespace: str, name: str) -> Body | None:
        return _read_if_present(
            self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "executions", name
        )

    @_api_errors
    def patch_status(self, namespace: str, name: str, status: Body, resource_version: str | None = None) -> None:
        body: Any
        if merge_patch_drops_nulls(status):
            body, content_type = status_json_patch(status, resource_version), "application/json-patch+json"
        else:
            body, content_type = {"status": status}, "application/merge-patch+json"
            if resource_version is not None:
                body["metadata"] = {"resourceVersion": resource_version}
        _send(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            "executions",
            name,
            body,
            _content_type=content_type,
        )

    @_api_errors
    def delete(self, namespace: str, name: str) -> None:
        _delete_if_present(self._custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, "executions", name)


class _KindCalls(NamedTuple):
    """The client's namespaced calls for one kind of sandbox object."""

    create: Callable[..., Any]
    read: Callable[..., Any]
    delete: Callable[..., Any]


class KubeSandboxes:
    """The sandbox's objects, created and deleted alike whatever their kind, and the pod's log."""

    def __init__(self, api_client: client.ApiClient) -> None:
        core = client.CoreV1Api(api_client)
        networking = client.NetworkingV1Api(api_client)
        self._core = core
        self._configuration = api_client.configuration
        # Deleted in this order: the pod first, so nothing runs without its NetworkPolicy.
        self._kinds = {
            "Pod": _KindCalls(core.create_namespaced_pod, core.read_namespaced_pod, core.delete_namespaced_pod),
            "ConfigMap": _KindCalls(
                core.create_namespaced_config_map, core.read_namespaced_config_map, core.delete_namespaced_config_map
            ),
            # bindings.json of an Execution with bindings (others have none: their delete finds nothing).
            "Secret": _KindCalls(
                core.create_namespaced_secret, core.read_namespaced_secret, core.delete_namespaced_secret
            ),
            "NetworkPolicy": _KindCalls(
                networking.create_namespaced_network_policy,
                networking.read_namespaced_network_policy,
                networking.delete_namespaced_network_policy,
            ),
        }

    @_api_errors
    def create(self, child: Body) -> Body:
        """Idempotent create: an object of that name already there (409) is fetched instead."""
        calls = self._kinds[child["kind"]]
        metadata = child["metadata"]
        try:
            return _request(calls.create, metadata["namespace"], child)
        except ApiException as error:
            if error.status != CONFLICT:
                raise
        return _request(calls.read, metadata["name"], metadata["namespace"])

    @_api_errors
    def read_pod(self, namespace: str, name: str) -> Body | None:
        return _read_if_present(self._kinds["Pod"].read, name, namespace)

    @_api_errors
    def find_pod(self, namespace: str, execution_uid: str) -> Body | None:
        pods = _items(
            self._core.list_namespaced_pod, namespace, label_selector=f"{EXECUTION_UID_LABEL}={execution_uid}"
        )
        return pods[0] if pods else None

    @_api_errors
    def warm_pods(self, namespace: str, template_hash: str) -> list[Body]:
        selector = f"{POOL_LABEL},!{EXECUTION_UID_LABEL},{TEMPLATE_HASH_LABEL}={template_hash}"
        return _items(self._core.list_namespaced_pod, namespace, label_selector=selector)

    @_api_errors
    def claim(self, namespace: str, name: str, patch: Body) -> Body:
        return _request(
            self._core.patch_namespaced_pod, name, namespace, patch, _content_type="application/merge-patch+json"
        )

    @_api_errors
    def deliver(self, namespace: str, name: str, request: bytes) -> bool:
        # stream() swaps the ApiClient's transport while it runs: a client of its own keeps the
        # handlers' other calls (other threads) on plain HTTP.
        core = client.CoreV1Api(client.ApiClient(self._configuration))
        attached: Any = stream(
            core.connect_get_namespaced_pod_attach,
            name,
            namespace,
            container=SANDBOX_CONTAINER,
            stdin=True,
            stdout=True,
            stderr=False,
            tty=False,
            binary=True,
            _preload_content=False,
        )
        try:
            attached.write_stdin(request)
            seen = b""
            give_up = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
            while contract.WARM_ACCEPTED not in seen and attached.is_open() and time.monotonic() < give_up:
                attached.update(timeout=max(0.0, give_up - time.monotonic()))
                # Only the acknowledgement matters; the rest of the stream is the program's, read from the log.
                seen = (seen + attached.read_stdout(timeout=0))[-len(contract.WARM_ACCEPTED) * 2 :]
            return contract.WARM_ACCEPTED in seen
        finally:
            attached.close()

    @_api_errors
    def read_report(self, namespace: str, pod_name: str) -> Report | None:
        """Streams the sandbox container's log through the report scanner (bounded memory)."""
        try:
            response: Any = self._core.read_namespaced_pod_log(
                pod_name,
                namespace,
                container=SANDBOX_CONTAINER,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status in (BAD_REQUEST, NOT_FOUND):
                return None  # the pod or its container is gone
            raise
        scanner = ReportScanner()
        try:
            for chunk in response.stream(LOG_CHUNK_BYTES):
                scanner.feed(chunk)
        finally:
            response.release_conn()
        return scanner.report()

    @_api_errors
    def delete(self, namespace: str, name: str) -> None:
        for calls in self._kinds.values():
            _delete_if_present(calls.delete, name, namespace)


class KubeClusterFacts:
    """Runtimes, the RuntimeClass, the cluster's pods and own networks (pods and network facts cached for a while),
    a namespace's SandboxBindings and the broker's Service."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._networking = client.NetworkingV1Api(api_client)
        self._node = client.NodeV1Api(api_client)
        self._discovery = client.DiscoveryV1Api(api_client)
        self._cache = TtlCache(NETWORK_FACTS_TTL_SECONDS)
        self._pods_cache = TtlCache(PODS_TTL_SECONDS)

    @_api_errors
    def list_runtimes(self) -> list[Body]:
        return _items(self._custom.list_cluster_custom_object, GROUP, VERSION, "runtimes")

    @_api_errors
    def runtime_class_exists(self, name: str) -> bool:
        return _read_if_present(self._node.read_runtime_class, name) is not None

    def api_service(self) -> Body:
        return self._cache.get("api_service", self._read_api_service)

    def network_objects(self) -> tuple[list[Body], list[Body]]:
        return self._cache.get("network_objects", lambda: (self._list_nodes(), self._list_api_endpoint_slices()))

    def service_cidrs(self) -> list[Body]:
        return self._cache.get("service_cidrs", self._list_service_cidrs)

    def pods(self) -> list[Body]:
        return self._pods_cache.get("pods", self._list_pods)

    @_api_errors
    def sandbox_bindings(self, namespace: str) -> list[Body]:
        return _items(self._custom.list_namespaced_custom_object, GROUP, VERSION, namespace, "sandboxbindings")

    @_api_errors
    def broker_service(self, namespace: str, name: str) -> Body | None:
        return _read_if_present(self._core.read_namespaced_service, name, namespace)

    @_api_errors
    def _list_pods(self) -> list[Body]:
        pods = _items(self._core.list_pod_for_all_namespaces, field_selector=UNENDED_PODS)
        return [_capacity_view(pod) for pod in pods]

    @_api_errors
    def _list_service_cidrs(self) -> list[Body]:
        # networking.k8s.io/v1 ServiceCIDR is GA since Kubernetes 1.33; before, CODEEXEC_CLUSTER_CIDRS names them.
        found = _read_if_present(self._networking.list_service_cidr)
        items: list[Body] = (found or {}).get("items", [])
        return items

    @_api_errors
    def _read_api_service(self) -> Body:
        namespace, name = API_SERVICE
        return _request(self._core.read_namespaced_service, name, namespace)

    @_api_errors
    def _list_nodes(self) -> list[Body]:
        return _items(self._core.list_node)

    @_api_errors
    def _list_api_endpoint_slices(self) -> list[Body]:
        namespace, name = API_SERVICE
        return _items(
            self._discovery.list_namespaced_endpoint_slice,
            namespace,
            label_selector=f"kubernetes.io/service-name={name}",
        )


class KubeWarmPools:
    """The WarmPool resources, their pods and the namespace's pool NetworkPolicy."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)
        self._networking = client.NetworkingV1Api(api_client)

    @_api_errors
    def read(self, namespace: str, name: str) -> Body | None:
        return _read_if_present(self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "warmpools", name)

    @_api_errors
    def patch_status(self, namespace: str, name: str, status: Body) -> None:
        _send(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            "warmpools",
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )

    @_api_errors
    def list_pods(self, namespace: str, label_selector: str) -> list[Body]:
        return _items(self._core.list_namespaced_pod, namespace, label_selector=label_selector)

    @_api_errors
    def create_pod(self, pod: Body) -> Body:
        return _request(self._core.create_namespaced_pod, pod["metadata"]["namespace"], pod)

    @_api_errors
    def delete_pod(self, namespace: str, name: str, resource_version: str) -> bool:
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version=resource_version))
        try:
            _send(self._core.delete_namespaced_pod, name, namespace, body=options)
        except ApiException as error:
            if error.status in (CONFLICT, NOT_FOUND):
                return False
            raise
        return True

    @_api_errors
    def ensure_networkpolicy(self, policy: Body) -> None:
        try:
            _request(self._networking.create_namespaced_network_policy, policy["metadata"]["namespace"], policy)
        except ApiException as error:
            if error.status != CONFLICT:
                raise


class KubeSandboxBindings:
    """The SandboxBinding resources and the Secrets their postgres DSNs are in (keys only)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    @_api_errors
    def read(self, namespace: str, name: str) -> Body | None:
        return _read_if_present(
            self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "sandboxbindings", name
        )

    @_api_errors
    def patch_status(self, namespace: str, name: str, status: Body) -> None:
        try:
            _send(
                self._custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                "sandboxbindings",
                name,
                {"status": status},
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status != NOT_FOUND:
                raise

    @_api_errors
    def secret_keys(self, namespace: str, name: str) -> frozenset[str] | None:
        secret = _read_if_present(self._core.read_namespaced_secret, name, namespace)
        # The values are dropped here: the operator never keeps, logs or passes on a credential.
        return None if secret is None else frozenset(secret.get("data") or {})


class Cluster:
    """The ClusterApi: its parts share one API client (and its connection pool)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.executions = KubeExecutions(api_client)
        self.sandboxes = KubeSandboxes(api_client)
        self.facts = KubeClusterFacts(api_client)
        self.pools = KubeWarmPools(api_client)
        self.bindings = KubeSandboxBindings(api_client)

    @classmethod
    def connect(cls) -> Cluster:
        """In-cluster credentials when running in a pod, else the local kubeconfig."""
        try:
            config.load_incluster_config()
        except ConfigException:
            config.load_kube_config()
        return cls(client.ApiClient())


# mypy checks here that Cluster offers everything the lifecycle uses, its pools what warm pools use, and its
# bindings what the BindingKeeper uses.
_IMPLEMENTS: type[ClusterApi] = Cluster
_IMPLEMENTS_POOLS: type[WarmPools] = KubeWarmPools
_IMPLEMENTS_BINDINGS: type[SandboxBindings] = KubeSandboxBindings
