"""The broker's own calls to the Kubernetes API (its ServiceAccount's token): read Executions, SandboxBindings and
Secrets, patch status.bindings, create Events. Nothing else."""

from __future__ import annotations

import base64
import binascii
import os
import ssl
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from codeexec.broker.errors import BackendUnavailable
from codeexec.client.kubeapi import Connection
from codeexec.models import GROUP, VERSION, SecretKeyRef

NOT_FOUND = 404
TIMEOUT = aiohttp.ClientTimeout(sock_connect=5, sock_read=10)
JSON_PATCH = "application/json-patch+json"


class Kube(Protocol):
    """What the access check, the engines and the usage writer need of the API (tests give a fake)."""

    async def get(self, path: str) -> dict[str, Any] | None: ...

    async def patch_status(self, namespace: str, name: str, uid: str, patch: dict[str, Any]) -> None:
        """Sets the members of `patch["status"]` on the Execution of that uid only."""
        ...

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None: ...


def execution_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/executions/{name}"


def binding_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/sandboxbindings/{name}"


def secret_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


async def secret_text(kube: Kube, namespace: str, ref: SecretKeyRef, binding: str) -> tuple[str, str]:
    """A binding's credential, read now: the Secret key's value as text (stripped) and what identifies this version
    of it (the Secret's resourceVersion and key). BackendUnavailable when the key is absent or not text; the message
    never holds the value."""
    secret = await kube.get(secret_path(namespace, ref.name))
    encoded = ((secret or {}).get("data") or {}).get(ref.key)
    if secret is None or encoded is None:
        raise BackendUnavailable(f"the binding {binding!r}: Secret {ref.name} has no key {ref.key}")
    try:
        text = base64.b64decode(encoded, validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError) as error:
        raise BackendUnavailable(f"the binding {binding!r}: Secret key {ref.key} is not text") from error
    return text, f"{secret['metadata'].get('resourceVersion')}/{ref.key}"


class KubeClient:
    """The API over aiohttp. In a pod: the API server's Service, the token file the chart projects (read afresh on
    each call: the kubelet rotates it) and the CA beside it; elsewhere: the kubeconfig's user."""

    def __init__(self, session: aiohttp.ClientSession, connection: Connection, token_file: str | None) -> None:
        self._session = session
        self._connection = connection
        self._token_file = token_file

    @classmethod
    def connect(cls, session: aiohttp.ClientSession, token_file: str) -> KubeClient:
        if "KUBERNETES_SERVICE_HOST" in os.environ and Path(token_file).exists():
            host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
            host = f"[{host}]" if ":" in host else host
            # The chart projects the cluster's CA next to the token.
            ca_file = Path(token_file).parent / "ca.crt"
            server = Connection(f"https://{host}:{port}", ssl.create_default_context(cafile=ca_file))
            return cls(session, server, token_file)
        return cls(session, Connection.load(), None)

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, None when it does not exist."""
        return await self._request("GET", path, None, None)

    async def patch_status(self, namespace: str, name: str, uid: str, patch: dict[str, Any]) -> None:
        """A JSON Patch whose first operation tests metadata.uid, so that an Execution deleted and re-created under
        its name never gets the old one's status (the API answers 422). A merge patch cannot say so: the status
        subresource drops its metadata.uid silently (seen on the cluster)."""
        operations = [{"op": "test", "path": "/metadata/uid", "value": uid}]
        operations += [
            {"op": "add", "path": f"/status/{key}", "value": value} for key, value in patch["status"].items()
        ]
        await self._request("PATCH", execution_path(namespace, name) + "/status", operations, JSON_PATCH)

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        await self._request("POST", f"/api/v1/namespaces/{namespace}/events", event, None)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        token = Path(self._token_file).read_text().strip() if self._token_file else self._connection.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | list[dict[str, Any]] | None, content_type: str | None
    ) -> dict[str, Any] | None:
        try:
            async with self._session.request(
                method,
                self._connection.server + path,
                json=body,
                ssl=self._connection.ssl,
                headers=self._headers(content_type),
                timeout=TIMEOUT,
            ) as response:
                if response.status == NOT_FOUND:
                    return None
                if response.status >= 400:
                    raise BackendUnavailable(f"the Kubernetes API answered {response.status} to {method} {path}")
                answer: dict[str, Any] = await response.json(content_type=None)
                return answer
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            raise BackendUnavailable(f"the Kubernetes API did not answer: {error}") from error
