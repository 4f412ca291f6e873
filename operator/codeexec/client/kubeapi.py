"""Async calls to the Kubernetes API server (aiohttp) for the SDK and the gateway: Executions, Runtimes, identity."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from codeexec.client import errors
from codeexec.client.shapes import FieldError, spec_path_to_request
from codeexec.models import GROUP, VERSION

EXECUTIONS = f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/executions"
RUNTIMES = f"/apis/{GROUP}/{VERSION}/runtimes"
SELF_SUBJECT_REVIEWS = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
# Connect and per-read limits: a silent API server must not hang a call (watches send nothing while
# nothing changes, so they rely on the server's timeoutSeconds instead of a read timeout).
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
# The API server's marker of a refusal by an admission webhook (the operator's webhook answers 422 itself).
WEBHOOK_DENIED = "denied the request"


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to trust it; `token` (a bearer token) or the client certificate in `ssl`."""

    server: str
    ssl: ssl.SSLContext | bool
    token: str | None = None
    namespace: str = "default"

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> Connection:
        """From the kubeconfig (KUBECONFIG or ~/.kube/config, its context's namespace), else in-cluster
        (the pod's service account); the kubernetes package's loaders read them, exec plugins included."""
        configuration = kube_client.Configuration()
        try:
            kube_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
            namespace = _kubeconfig_namespace(kubeconfig, context)
        except kube_config.ConfigException as no_kubeconfig:
            if kubeconfig:
                raise
            try:
                kube_config.load_incluster_config(client_configuration=configuration)
            except kube_config.ConfigException:
                raise errors.Unavailable(
                    f"no Kubernetes API to talk to: {no_kubeconfig} (set KUBECONFIG), and not in a pod"
                ) from None
            namespace = _service_account_namespace()
        return cls.from_configuration(configuration, namespace)

    @classmethod
    def in_cluster(cls, ca_file: str) -> Connection:
        """The API server as seen from a pod (the variables the kubelet sets in every container), trusted with
        `ca_file`, without any credentials: the gateway adds each caller's token (its own is for readiness only)."""
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", ssl.create_default_context(cafile=ca_file))

    @classmethod
    def from_configuration(cls, configuration: kube_client.Configuration, namespace: str) -> Connection:
        token = configuration.api_key.get("authorization", "").removeprefix("Bearer ").strip() or None
        return cls(configuration.host, _ssl_context(configuration), token, namespace)

    def as_caller(self, token: str, namespace: str) -> Connection:
        return Connection(self.server, self.ssl, token, namespace)


def _ssl_context(configuration: kube_client.Configuration) -> ssl.SSLContext | bool:
    if not configuration.verify_ssl:
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return context


def _kubeconfig_namespace(kubeconfig: str | None, context: str | None) -> str:
    contexts, current = kube_config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = next((c for c in contexts if c["name"] == context), current) if context else current
    namespace: str = (chosen or {}).get("context", {}).get("namespace") or "default"
    return namespace


def _service_account_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as file:
            return file.read().strip()
    except OSError:
        return "default"


class KubeApi:
    """The calls the SDK and the gateway make, as the connection's user, in its namespace."""

    def __init__(self, session: aiohttp.ClientSession, connection: Connection) -> None:
        self._session = session
        self.connection = connection

    @property
    def namespace(self) -> str:
        return self.connection.namespace

    def _executions(self) -> str:
        return EXECUTIONS.format(namespace=self.namespace)

    async def create_execution(self, manifest: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        params = {"dryRun": "All"} if dry_run else {}
        return await self._call("POST", self._executions(), params=params, body=manifest)

    async def get_execution(self, name: str) -> dict[str, Any]:
        return await self._call("GET", f"{self._executions()}/{name}")

    async def list_executions(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else {}
        items: list[dict[str, Any]] = (await self._call("GET", self._executions(), params=params))["items"]
        return items

    async def delete_execution(self, name: str) -> None:
        await self._call("DELETE", f"{self._executions()}/{name}")

    async def list_runtimes(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self._call("GET", RUNTIMES))["items"]
        return items

    async def user_name(self) -> str:
        """Who the API server says the caller is (SelfSubjectReview, Kubernetes 1.28+)."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = await self._call("POST", SELF_SUBJECT_REVIEWS, body=review)
        name: str = answer.get("status", {}).get("userInfo", {}).get("username", "")
        return name

    async def watch_execution(self, name: str, resource_version: str, seconds: int) -> AsyncIterator[dict[str, Any]]:
        """The Execution's versions after `resource_version`, for at most `seconds` (the server ends the watch);
        raises errors.CodeExecError with status 410 when that version is too old to watch from."""
        params = {
            "watch": "1",
            "fieldSelector": f"metadata.name={name}",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "false",
            "timeoutSeconds": str(max(1, seconds)),
        }
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=seconds + READ_TIMEOUT)
        async with self._open("GET", self._executions(), params, timeout) as response:
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise errors.from_status(int(status.get("code", 500)), status.get("message", "watch failed"))
                if event.get("type") in ("ADDED", "MODIFIED"):
                    yield event["object"]
                elif event.get("type") == "DELETED":
                    raise errors.NotFound(f"execution {name} was deleted while it was awaited", execution_id=name)

    async def follow_log(self, pod: str, container: str) -> AsyncIterator[bytes]:
        """The container's log lines as they are written, until it ends (no read timeout: a program may be quiet)."""
        path = f"/api/v1/namespaces/{self.namespace}/pods/{pod}/log"
        params = {"follow": "true", "container": container}
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT)
        try:
            async with self._open("GET", path, params, timeout) as response:
                async for line in response.content:
                    yield line
        except aiohttp.ClientError as error:
            raise errors.Unavailable(f"the pod's log ended: {error}") from error

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.connection.token:
            headers["Authorization"] = f"Bearer {self.connection.token}"
        return headers

    async def _call(
        self, method: str, path: str, params: Mapping[str, str] | None = None, body: Any = None
    ) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        try:
            async with self._open(method, path, params or {}, timeout, body) as response:
                answer: dict[str, Any] = await response.json(content_type=None)
                return answer
        except (TimeoutError, aiohttp.ClientError) as error:
            raise errors.Unavailable(f"the Kubernetes API server did not answer: {error}") from error

    @contextlib.asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        timeout: aiohttp.ClientTimeout,
        body: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The API server's response, as the connection's user; an error status is raised as its exception."""
        async with self._session.request(
            method,
            self.connection.server + path,
            params=params,
            json=body,
            ssl=self.connection.ssl,
            headers=self._headers(),
            timeout=timeout,
        ) as response:
            if response.status >= 400:
                raise await _error(response)
            yield response


async def _error(response: aiohttp.ClientResponse) -> errors.CodeExecError:
    """The API server's Status as an exception: its message, and for 422 the fields it names."""
    try:
        status = json.loads(await response.text())
    except ValueError:
        status = {}
    message = status.get("message") or f"{response.status} {response.reason}"
    if response.status == 422 or (response.status == 400 and WEBHOOK_DENIED in message):
        causes = status.get("details", {}).get("causes", [])
        fields = [
            FieldError(field=spec_path_to_request(cause.get("field", "")), message=cause.get("message", ""))
            for cause in causes
        ]
        return errors.InvalidRequest(message, fields or [FieldError(field="", message=message)])
    return errors.from_status(response.status, message)
