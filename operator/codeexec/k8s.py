"""The Kubernetes API calls of the operator (the only module doing API I/O)."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from codeexec.models import GROUP, VERSION
from codeexec.report import Report, ReportScanner
from codeexec.status import SANDBOX_CONTAINER

# (connect, read) seconds: a request to an unresponsive API server must not hang a handler.
REQUEST_TIMEOUT = (5.0, 30.0)
LOG_CHUNK_BYTES = 64 * 1024
BAD_REQUEST = 400
NOT_FOUND = 404
CONFLICT = 409
# The API server's Service, which sandboxes must never reach (the isolation probe).
API_SERVICE = ("default", "kubernetes")
# Nodes and the API server's addresses change rarely; Executions can come by the hundred.
NETWORK_FACTS_TTL_SECONDS = 30.0

Body = dict[str, Any]
P = ParamSpec("P")
R = TypeVar("R")


class ApiError(Exception):
    """A failed API call; `status` is the HTTP status, None when the server was not reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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


def _json(response: Any) -> Body:
    # Every call uses _preload_content=False: plain dicts in and out, no client models.
    body: Body = json.loads(response.data)
    return body


class Cluster:
    """API access with explicit timeouts; objects are plain dicts."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._core = client.CoreV1Api(api_client)
        self._networking = client.NetworkingV1Api(api_client)
        self._node = client.NodeV1Api(api_client)
        self._discovery = client.DiscoveryV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._cache: dict[str, tuple[float, Any]] = {}
        self._cache_lock = threading.Lock()

    @classmethod
    def connect(cls) -> Cluster:
        """In-cluster credentials when running in a pod, else the local kubeconfig."""
        try:
            config.load_incluster_config()
        except ConfigException:
            config.load_kube_config()
        return cls(client.ApiClient())

    @_api_errors
    def list_runtimes(self) -> list[Body]:
        response = self._custom.list_cluster_custom_object(
            GROUP, VERSION, "runtimes", _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
        items: list[Body] = _json(response).get("items", [])
        return items

    @_api_errors
    def runtime_class_exists(self, name: str) -> bool:
        try:
            self._node.read_runtime_class(name, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status == NOT_FOUND:
                return False
            raise
        return True

    def api_service(self) -> Body:
        """The `kubernetes` Service in `default` (cached for a while)."""
        service: Body = self._cached("api_service", self._read_api_service)
        return service

    def network_objects(self) -> tuple[list[Body], list[Body]]:
        """Every Node and the EndpointSlices of the `kubernetes` Service (cached for a while): the
        addresses a domain must never be pinned to, beyond the configured cluster ranges."""
        objects: tuple[list[Body], list[Body]] = self._cached(
            "network_objects", lambda: (self._list_nodes(), self._list_api_endpoint_slices())
        )
        return objects

    def service_cidrs(self) -> list[Body]:
        """The ServiceCIDR objects, the ranges Service IPs come from (cached for a while)."""
        items: list[Body] = self._cached("service_cidrs", self._list_service_cidrs)
        return items

    @_api_errors
    def _list_service_cidrs(self) -> list[Body]:
        try:
            response = self._networking.list_service_cidr(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            # networking.k8s.io/v1 ServiceCIDR is GA since Kubernetes 1.33; before, CODEEXEC_CLUSTER_CIDRS names them.
            if error.status == NOT_FOUND:
                return []
            raise
        items: list[Body] = _json(response).get("items", [])
        return items

    @_api_errors
    def _read_api_service(self) -> Body:
        namespace, name = API_SERVICE
        response = self._core.read_namespaced_service(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
        return _json(response)

    @_api_errors
    def _list_nodes(self) -> list[Body]:
        response = self._core.list_node(_preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        items: list[Body] = _json(response).get("items", [])
        return items

    @_api_errors
    def _list_api_endpoint_slices(self) -> list[Body]:
        namespace, name = API_SERVICE
        response = self._discovery.list_namespaced_endpoint_slice(
            namespace,
            label_selector=f"kubernetes.io/service-name={name}",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
        items: list[Body] = _json(response).get("items", [])
        return items

    def _cached(self, key: str, load: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._cache_lock:
            entry = self._cache.get(key)
        if entry is not None and now - entry[0] < NETWORK_FACTS_TTL_SECONDS:
            return entry[1]
        value = load()  # outside the lock: a slow API call must not hold up other handlers
        with self._cache_lock:
            self._cache[key] = (now, value)
        return value

    @_api_errors
    def read_execution(self, namespace: str, name: str) -> Body | None:
        return self._read_if_present(
            self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "executions", name
        )

    @_api_errors
    def patch_execution_status(
        self, namespace: str, name: str, status: Body, resource_version: str | None = None
    ) -> None:
        """Merge-patches .status. With a resourceVersion the patch fails (409) if the
        Execution changed since it was read: a finished outcome is never overwritten."""
        body: Body = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        self._custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            "executions",
            name,
            body,
            _content_type="application/merge-patch+json",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )

    @_api_errors
    def delete_execution(self, namespace: str, name: str) -> None:
        self._delete_if_present(
            self._custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, "executions", name
        )

    @_api_errors
    def create_configmap(self, body: Body) -> Body:
        return self._create_or_get(self._core.create_namespaced_config_map, self._core.read_namespaced_config_map, body)

    @_api_errors
    def create_networkpolicy(self, body: Body) -> Body:
        return self._create_or_get(
            self._networking.create_namespaced_network_policy,
            self._networking.read_namespaced_network_policy,
            body,
        )

    @_api_errors
    def create_pod(self, body: Body) -> Body:
        return self._create_or_get(self._core.create_namespaced_pod, self._core.read_namespaced_pod, body)

    @_api_errors
    def read_pod(self, namespace: str, name: str) -> Body | None:
        return self._read_if_present(self._core.read_namespaced_pod, name, namespace)

    @_api_errors
    def read_report(self, namespace: str, pod_name: str) -> Report | None:
        """Streams the sandbox container's log through the report scanner (bounded memory).
        None when there is no report, or no log any more (the pod or its container is gone)."""
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
                return None
            raise
        scanner = ReportScanner()
        try:
            for chunk in response.stream(LOG_CHUNK_BYTES):
                scanner.feed(chunk)
        finally:
            response.release_conn()
        return scanner.report()

    @_api_errors
    def delete_sandbox(self, namespace: str, name: str) -> None:
        """Deletes the pod, ConfigMap and NetworkPolicy named `name`; missing ones are fine."""
        deletes: list[Callable[..., Any]] = [
            self._core.delete_namespaced_pod,
            self._core.delete_namespaced_config_map,
            self._networking.delete_namespaced_network_policy,
        ]
        for delete in deletes:
            self._delete_if_present(delete, name, namespace)

    @staticmethod
    def _read_if_present(read: Callable[..., Any], *args: str) -> Body | None:
        """None when the object does not exist (404)."""
        try:
            response = read(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status == NOT_FOUND:
                return None
            raise
        return _json(response)

    @staticmethod
    def _delete_if_present(delete: Callable[..., Any], *args: str) -> None:
        """Background delete; an object already gone (404) is what was wanted anyway."""
        try:
            delete(
                *args,
                propagation_policy="Background",
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status != NOT_FOUND:
                raise

    @staticmethod
    def _create_or_get(create: Callable[..., Any], read: Callable[..., Any], body: Body) -> Body:
        """Idempotent create: an object of that name already there (409) is fetched instead."""
        metadata = body["metadata"]
        try:
            response = create(
                metadata["namespace"],
                body,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status != CONFLICT:
                raise
            response = read(
                metadata["name"],
                metadata["namespace"],
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        return _json(response)
