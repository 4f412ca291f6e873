"""Who calls the gateway: the bearer token it forwards to the API server, and the namespace it acts in."""

from __future__ import annotations

import hashlib
import time

import aiohttp

from codeexec.client import errors
from codeexec.client.kubeapi import SERVICE_ACCOUNT_PREFIX, Connection, KubeApi

# A token's namespace is looked up once a minute at most: a SelfSubjectReview per call would add a round trip.
NAMESPACE_TTL_SECONDS = 60.0
MAX_REMEMBERED = 10_000


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer ...` header; Unauthorized when there is none."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.Unauthorized("send a Kubernetes bearer token: Authorization: Bearer $(kubectl create token NAME)")
    return token.strip()


def service_account_namespace(user_name: str) -> str | None:
    """system:serviceaccount:NAMESPACE:NAME → NAMESPACE; None for other users."""
    if not user_name.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    namespace, _, _ = user_name.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    return namespace or None


class Callers:
    """The Kubernetes API as each caller: the gateway forwards the caller's token, so the API server authenticates
    it and RBAC authorizes every call; the gateway's own identity never touches an Execution."""

    def __init__(self, session: aiohttp.ClientSession, server: Connection) -> None:
        self._session = session
        self._server = server
        self._namespaces: dict[str, tuple[float, str | None]] = {}

    async def api(self, token: str, namespace: str | None) -> KubeApi:
        """The API as the token's user in `namespace`, by default its service account's."""
        chosen = namespace or await self._own_namespace(token)
        if not chosen:
            raise errors.InvalidRequest(
                "this token is not a service account's: name the namespace (?namespace=...)", reason="NamespaceRequired"
            )
        return KubeApi(self._session, self._server.as_caller(token, chosen))

    async def _own_namespace(self, token: str) -> str | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        remembered = self._namespaces.get(key)
        if remembered is not None and now - remembered[0] < NAMESPACE_TTL_SECONDS:
            return remembered[1]
        # A review fails with 401 for a token the API server does not accept: the caller's error.
        user = await KubeApi(self._session, self._server.as_caller(token, "default")).user_name()
        if len(self._namespaces) >= MAX_REMEMBERED:
            self._namespaces.clear()
        self._namespaces[key] = (now, service_account_namespace(user))
        return self._namespaces[key][1]
