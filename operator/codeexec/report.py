"""Finds and parses the runner's report, the final line of a sandbox pod's log, in bounded memory."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ConfigDict, Field

from codeexec.models import LogEntry, Model
from codeexec_runner.contract import REPORT_PREFIX

# Far above a real report (outputs are capped at 256 KiB each); anything longer is not one.
MAX_REPORT_LINE_BYTES = 4 * 1024 * 1024


class StreamOutput(Model):
    """What the runner kept of one output stream (contract.StreamDict)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    text: str
    bytes: int = Field(ge=0)
    truncated: bool


class NetworkIsolation(Model):
    """What the runner's isolation probe saw before it started the program (contract.IsolationDict)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    probe: str
    isolated: bool
    waited_ms: int = Field(ge=0)
    attempts: int = Field(ge=0)


class Usage(Model):
    """What the program's processes used (contract.UsageDict), from the rusage of each process the runner reaped."""

    model_config = ConfigDict(strict=True, extra="ignore")

    cpu_ms: int = Field(ge=0)
    peak_memory_bytes: int = Field(ge=0)


class Report(Model):
    """The runner's account of the program's run: validates a contract.ReportDict, whose keys are these
    fields' camelCase aliases (tests/unit/test_runner_contract.py keeps them equal)."""

    # Strict: a report whose types are off is not the runner's and is ignored.
    model_config = ConfigDict(strict=True, extra="ignore")

    exit_code: int
    timed_out: bool
    signal: int | None
    duration_ms: int = Field(ge=0)
    stdout: StreamOutput
    stderr: StreamOutput
    has_result: bool
    result: Any
    logs: list[LogEntry]
    logs_truncated: bool
    error: str | None
    # Absent from reports of runners started without --isolation-probe.
    network_isolation: NetworkIsolation | None = None
    # Absent from reports of runners older than the key; null when no program ran.
    usage: Usage | None = None


class ReportScanner:
    """Consumes a log in chunks and keeps only what the report needs: the last non-blank
    line, and only while it may be a report. Memory stays below two report lines."""

    def __init__(self, max_line_bytes: int = MAX_REPORT_LINE_BYTES) -> None:
        self._max_line_bytes = max_line_bytes
        self._line = bytearray()
        self._line_too_long = False
        self._line_blank = True
        self._candidate: bytes | None = None

    def feed(self, chunk: bytes) -> None:
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            self._append(piece)
            self._end_line()
        self._append(rest)

    def report(self) -> Report | None:
        """The report, if the log's last non-blank line is a valid one."""
        candidate = self._candidate if self._line_blank else self._current_candidate()
        if candidate is None:
            return None
        try:
            data = json.loads(candidate[len(REPORT_PREFIX) :].decode(errors="replace"))
            return Report.model_validate(data)
        except (ValueError, RecursionError):
            return None

    def _append(self, data: bytes) -> None:
        if not data:
            return
        if data.strip():
            self._line_blank = False
        if self._line_too_long:
            return
        if len(self._line) + len(data) > self._max_line_bytes:
            self._line_too_long = True
            self._line = bytearray()
        else:
            self._line += data

    def _end_line(self) -> None:
        if not self._line_blank:
            self._candidate = self._current_candidate()
        self._line = bytearray()
        self._line_too_long = False
        self._line_blank = True

    def _current_candidate(self) -> bytes | None:
        if self._line_too_long or not self._line.startswith(REPORT_PREFIX):
            return None
        return bytes(self._line)


def parse_report(log: str | bytes) -> Report | None:
    """The report at the end of a whole log (text or bytes, invalid UTF-8 tolerated)."""
    scanner = ReportScanner()
    scanner.feed(log.encode() if isinstance(log, str) else log)
    return scanner.report()
