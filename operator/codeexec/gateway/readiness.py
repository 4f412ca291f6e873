"""GET /health/ready: the API server answers, the three CRDs are Established and an operator is available.

The CRD and operator checks read with the gateway pod's own token (the chart projects one, with read-only rights
for exactly these reads); without a token file (the gateway run outside a cluster) they are skipped (`None`)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from codeexec.client.kubeapi import Connection

CRDS = ("executions.codeexec.io", "runtimes.codeexec.io", "warmpools.codeexec.io")
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
TIMEOUT = aiohttp.ClientTimeout(total=3)


@dataclass(frozen=True)
class ReadinessConfig:
    """Where the pod's token is and which Deployment runs the operator (the gateway's command line)."""

    token_file: str | None = None
    operator_deployment: str | None = None
    operator_namespace: str = "default"


async def get(session: aiohttp.ClientSession, server: Connection, path: str, token: str | None) -> Any:
    """GET `path` on the API server: the status and the JSON body (None unless 200 with JSON: /readyz is text)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(server.server + path, ssl=server.ssl, headers=headers, timeout=TIMEOUT) as answer:
        text = await answer.text()
    try:
        return answer.status, json.loads(text) if answer.status == 200 else None
    except ValueError:
        return answer.status, None


def read_token(token_file: str | None) -> str | None:
    """The token, read afresh on each check (the kubelet rotates projected tokens); None without a file."""
    if not token_file:
        return None
    try:
        return Path(token_file).read_text().strip() or None
    except OSError:
        return None


async def check(session: aiohttp.ClientSession, server: Connection, config: ReadinessConfig) -> dict[str, bool | None]:
    """Each check true, false, or None: skipped without a token file (crds, operator) or without an operator
    Deployment name (operator)."""
    token = read_token(config.token_file)
    checks: dict[str, bool | None] = {
        "apiServer": False,
        "crds": None if token is None else False,
        "operator": None if token is None or not config.operator_deployment else False,
    }
    try:
        # Without credentials any answer but a server error counts (401 where anonymous requests are off):
        # it is the server's liveness that matters.
        status, _ = await get(session, server, "/readyz", None)
    except (aiohttp.ClientError, TimeoutError):
        return checks
    checks["apiServer"] = status < 500
    if token is not None:
        # At once, so the probe's 5 s timeout holds even when each read takes most of its own 3 s.
        crds, operator = await asyncio.gather(
            _crds_established(session, server, token), _operator_available(session, server, token, config)
        )
        checks["crds"] = crds
        if config.operator_deployment:
            checks["operator"] = operator
    return checks


async def _crds_established(session: aiohttp.ClientSession, server: Connection, token: str) -> bool:
    """Each CRD exists with the condition Established=True."""
    answers = await asyncio.gather(
        *(get(session, server, CRD_PATH + name, token) for name in CRDS), return_exceptions=True
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            if isinstance(answer, (aiohttp.ClientError, TimeoutError)):
                return False
            raise answer
        status, crd = answer
        conditions = (crd or {}).get("status", {}).get("conditions") or []
        if status != 200 or not any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return False
    return True


async def _operator_available(
    session: aiohttp.ClientSession, server: Connection, token: str, config: ReadinessConfig
) -> bool:
    if not config.operator_deployment:
        return False
    path = f"/apis/apps/v1/namespaces/{config.operator_namespace}/deployments/{config.operator_deployment}"
    try:
        status, deployment = await get(session, server, path, token)
    except (aiohttp.ClientError, TimeoutError):
        return False
    return status == 200 and int((deployment or {}).get("status", {}).get("availableReplicas") or 0) >= 1
