"""The gateway's request limits: body size (refused before it is read), concurrent waits per caller, and
Executions waiting in the caller's namespace."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from codeexec.client import errors
from codeexec.client.kubeapi import KubeApi
from codeexec.gateway.problems import MEDIA_TYPE, TITLES, TYPE_PREFIX
from codeexec.vocabulary import QUEUED, Phase

# Retry-After of a 429 for a full queue: about how long a queued Execution waits for a slot to free.
QUEUE_RETRY_AFTER_SECONDS = 10


class BodyLimit:
    """ASGI middleware: a body above `max_bytes` gets 413 as soon as that is known, from Content-Length before
    any of it is read, else (chunked) once the bytes received pass the limit; the route never runs."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = json.dumps(
            {
                "type": TYPE_PREFIX + errors.TOO_LARGE,
                "title": TITLES[413],
                "status": 413,
                "detail": f"the request body is larger than {self.max_bytes} bytes",
                "instance": scope.get("path", ""),
                "reason": errors.TOO_LARGE,
            }
        ).encode()
        headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        # Connection: close: the unread rest of the body must not be taken for the next request.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class WaitSlots:
    """At most `per_caller` requests of one caller (one token) waiting for an Execution at a time; beyond: 429."""

    def __init__(self, per_caller: int) -> None:
        self.per_caller = per_caller
        self._waiting: Counter[str] = Counter()

    @contextmanager
    def hold(self, token: str) -> Iterator[None]:
        key = hashlib.sha256(token.encode()).hexdigest()
        if self._waiting[key] >= self.per_caller:
            raise errors.TooManyRequests(
                f"this caller already waits for {self.per_caller} Executions; wait=false, or try again later",
                retry_after=1,
            )
        self._waiting[key] += 1
        try:
            yield
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]


def is_waiting(execution: Mapping[str, Any]) -> bool:
    """Whether an Execution waits for a sandbox: queued (Pending, reason Queued), or not yet seen by the operator."""
    status = execution.get("status") or {}
    phase = status.get("phase")
    return phase is None or (phase == Phase.PENDING and status.get("reason") == QUEUED)


async def check_namespace_queue(api: KubeApi, limit: int) -> None:
    """Raises 429 when `limit` (0: no limit) or more of the namespace's Executions wait, counted as the caller
    (its list right decides, as for everything else). Before a create, so a refused request creates nothing.
    Count and create are two calls: concurrent requests can pass the limit by as many as arrive together."""
    if limit <= 0:
        return
    waiting = sum(1 for execution in await api.list_executions() if is_waiting(execution))
    if waiting >= limit:
        raise errors.TooManyRequests(
            f"namespace {api.namespace} already has {waiting} Executions waiting (the gateway allows {limit}); "
            "try again later",
            reason=errors.QUEUE_FULL,
            retry_after=QUEUE_RETRY_AFTER_SECONDS,
        )
