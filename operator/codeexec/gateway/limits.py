"""The gateway's request limits: body size (refused before it is read) and concurrent waits per caller."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from codeexec.client import errors
from codeexec.gateway.problems import MEDIA_TYPE, TITLES, TYPE_PREFIX


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
                f"this caller already waits for {self.per_caller} Executions; wait=false, or try again later"
            )
        self._waiting[key] += 1
        try:
            yield
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
