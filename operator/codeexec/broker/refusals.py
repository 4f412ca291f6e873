"""Refused calls reported on their Execution: a Warning Event `BindingRefused` saying why (the code itself only
gets 401 or 403), at most one per Execution every EVENT_INTERVAL_SECONDS so a looping program cannot flood the
API server (its status.bindings `refused` counts them all)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from codeexec.broker.kube import Kube
from codeexec.models import GROUP, VERSION

logger = logging.getLogger(__name__)

REASON = "BindingRefused"
COMPONENT = "codeexec-broker"
EVENT_INTERVAL_SECONDS = 5.0
MAX_REMEMBERED = 10_000


class RefusalEvents:
    def __init__(self, kube: Kube, interval_seconds: float = EVENT_INTERVAL_SECONDS) -> None:
        self._kube = kube
        self._interval = interval_seconds
        self._last: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def report(self, execution: dict[str, Any], binding: str, detail: str) -> None:
        """Creates the Event in the background (the refusal is answered at once)."""
        uid = execution["metadata"]["uid"]
        now = time.monotonic()
        if now - self._last.get(uid, float("-inf")) < self._interval:
            return
        if len(self._last) >= MAX_REMEMBERED:
            self._last.clear()
        self._last[uid] = now
        task = asyncio.create_task(self._create(execution, f"binding {binding!r}: {detail}"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create(self, execution: dict[str, Any], message: str) -> None:
        metadata = execution["metadata"]
        try:
            await self._kube.create_event(metadata["namespace"], event(metadata, message))
        except Exception as error:  # an Event is best effort; the refusal stands and is logged
            logger.warning("Event %s on %s/%s not created: %s", REASON, metadata["namespace"], metadata["name"], error)


def event(metadata: dict[str, Any], message: str) -> dict[str, Any]:
    """A core/v1 Warning Event on the Execution."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Execution",
            "namespace": metadata["namespace"],
            "name": metadata["name"],
            "uid": metadata["uid"],
        },
        "type": "Warning",
        "reason": REASON,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
