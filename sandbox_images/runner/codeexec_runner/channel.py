"""The harness channel (fd 3): JSON lines carrying console logs and the result, parsed in bounded memory."""

from __future__ import annotations

import json
import re
from typing import Any

from codeexec_runner.contract import MAX_LOG_BYTES, MAX_LOG_ENTRIES, LogEntryDict

CHANNEL_FD = 3
# Deeper results could exceed the recursion limit of json.dumps when the report is written.
MAX_RESULT_DEPTH = 100
LOG_LEVELS = frozenset({"log", "info", "warn", "error", "debug"})
RFC3339_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Channel:
    """The harness channel (fd 3): JSON lines carrying logs and the result, with bounded memory."""

    def __init__(self, max_result_bytes: int) -> None:
        self.max_result_bytes = max_result_bytes
        self.line_limit = max_result_bytes + MAX_LOG_BYTES + 1024  # room for one JSON envelope
        self.pending = bytearray()
        self.discarding = False
        self.has_result = False
        self.result: Any = None
        self.logs: list[LogEntryDict] = []
        self.log_bytes = 0
        self.logs_truncated = False
        self.error: str | None = None

    def feed(self, chunk: bytes) -> None:
        while chunk:
            head, newline, chunk = chunk.partition(b"\n")
            if not self.discarding:
                self.pending += head
                if len(self.pending) > self.line_limit:
                    self.fail(f"channel line longer than {self.line_limit} bytes")
                    self.pending.clear()
                    self.discarding = True
            if newline:
                if not self.discarding:
                    self.handle_line(bytes(self.pending))
                self.pending.clear()
                self.discarding = False

    def finish(self) -> None:
        if self.pending and not self.discarding:
            self.handle_line(bytes(self.pending))
        self.pending.clear()

    def fail(self, message: str) -> None:
        if self.error is None:  # the first failure explains the rest
            self.error = message

    def handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            self.fail("malformed channel line: not JSON")
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "log":
            self.add_log(msg)
        elif kind == "result" and "value" in msg:
            self.set_result(msg["value"])
        elif kind == "error" and isinstance(msg.get("message"), str):
            self.fail(msg["message"])
        else:
            self.fail("malformed channel line: unknown message")

    def add_log(self, msg: dict[str, Any]) -> None:
        level, when, message = msg.get("level"), msg.get("time"), msg.get("message")
        if (
            level not in LOG_LEVELS
            or not isinstance(when, str)
            or not RFC3339_UTC_MS.fullmatch(when)
            or not isinstance(message, str)
        ):
            self.fail("malformed channel line: bad log entry")
            return
        if self.logs_truncated:
            return
        encoded = message.encode("utf-8", "surrogatepass")
        room = MAX_LOG_BYTES - self.log_bytes
        if len(self.logs) >= MAX_LOG_ENTRIES or room <= 0:
            self.logs_truncated = True
            return
        if len(encoded) > room:
            message = encoded[:room].decode("utf-8", "ignore")
            self.logs_truncated = True
        self.log_bytes += min(len(encoded), room)
        self.logs.append({"level": level, "time": when, "message": message})

    def set_result(self, value: Any) -> None:
        if self.has_result:
            self.fail("more than one result on the channel; the first one stands")
            return
        if json_depth(value) > MAX_RESULT_DEPTH:
            self.fail(f"result is nested deeper than {MAX_RESULT_DEPTH} levels")
            return
        size = len(json.dumps(value))
        if size > self.max_result_bytes:
            self.fail(f"result is {size} bytes of JSON, above the limit of {self.max_result_bytes}")
            return
        self.has_result = True
        self.result = value


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value, computed without recursion (the value is untrusted)."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            child for v in level for child in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())
        ]
    return depth
