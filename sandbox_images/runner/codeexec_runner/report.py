"""The runner's outcome and the report line that carries it to the operator (contract.ReportDict)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from codeexec_runner.channel import Channel
from codeexec_runner.contract import REPORT_PREFIX, ReportDict, StreamDict
from codeexec_runner.isolation import Isolation
from codeexec_runner.output import Capture, write_all
from codeexec_runner.process import Usage


@dataclass
class Outcome:
    """Everything the report tells; parts are missing when the program never ran."""

    exit_code: int
    timed_out: bool = False
    signal: int | None = None
    duration_ms: int = 0
    error: str | None = None
    stdout: Capture | None = None
    stderr: Capture | None = None
    channel: Channel | None = None
    isolation: Isolation | None = None
    usage: Usage | None = None  # None when no program ran


def report_json(outcome: Outcome) -> ReportDict:
    channel = outcome.channel or Channel(0)
    empty: StreamDict = {"text": "", "bytes": 0, "truncated": False}
    error = outcome.error or channel.error
    return {
        "exitCode": outcome.exit_code,
        "timedOut": outcome.timed_out,
        "signal": outcome.signal,
        "durationMs": outcome.duration_ms,
        "stdout": outcome.stdout.to_json() if outcome.stdout else empty,
        "stderr": outcome.stderr.to_json() if outcome.stderr else empty,
        "hasResult": channel.has_result,
        "result": channel.result,
        "logs": channel.logs,
        "logsTruncated": channel.logs_truncated,
        "error": error,
        "networkIsolation": outcome.isolation.to_json() if outcome.isolation else None,
        "usage": outcome.usage.to_json() if outcome.usage else None,
    }


def report_line(outcome: Outcome) -> bytes:
    """The report as the log's last line, preceded by a newline so it starts a line of its own."""
    # ensure_ascii: a result may hold lone surrogates (valid JSON escapes) that UTF-8 cannot encode.
    line = json.dumps(report_json(outcome), ensure_ascii=True, separators=(",", ":"))
    return b"\n" + REPORT_PREFIX + line.encode("ascii") + b"\n"


def write_report(outcome: Outcome) -> None:
    write_all(sys.stdout.fileno(), report_line(outcome))
