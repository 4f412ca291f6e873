"""The Kubernetes API calls of the operator (the only module doing API I/O)."""

from __future__ import annotations

import functools
import json
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
        self._custom = client.CustomObjectsApi(api_client)

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

    @_api_errors
    def read_execution(self, namespace: str, name: str) -> Body | None:
        try:
            response = self._custom.get_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "executions",
                name,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status == NOT_FOUND:
                return None
            raise
        return _json(response)

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
        try:
            self._custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                "executions",
                name,
                propagation_policy="Background",
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as error:
            if error.status != NOT_FOUND:
                raise

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
        try:
            response = self._core.read_namespaced_pod(
                name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == NOT_FOUND:
                return None
            raise
        return _json(response)

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
            try:
                delete(
                    name,
                    namespace,
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
