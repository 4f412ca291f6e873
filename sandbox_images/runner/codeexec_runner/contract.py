"""The runner↔operator contract, defined once: the runner's path and flags, the report line and its schema, caps.

Standard library only: the runner (in every sandbox image) and the operator (`codeexec`) both
import this module, so neither keeps a copy. sandbox_images/README.md describes it in prose.
"""

from __future__ import annotations

from typing import Any, Final, TypedDict

# Where every sandbox image carries the runner (a zipapp of this package); the pod's command.
RUNNER_PATH: Final = "/opt/codeexec/runner"

# The runner's flags; the program's command follows "--".
TIMEOUT_SECONDS_FLAG: Final = "--timeout-seconds"  # required
MAX_OUTPUT_BYTES_FLAG: Final = "--max-output-bytes"  # required
STDIN_FLAG: Final = "--stdin"
INPUT_FLAG: Final = "--input"
ENV_FILE_FLAG: Final = "--env-file"
ISOLATION_PROBE_FLAG: Final = "--isolation-probe"
ISOLATION_WAIT_SECONDS_FLAG: Final = "--isolation-wait-seconds"

# How long the runner waits for the pod's NetworkPolicy to be enforced before it gives up without
# running the code (enforcers program a new pod's rules moments after it starts). The runner's
# default; the operator passes it and adds it to the pod's activeDeadlineSeconds.
ISOLATION_WAIT_SECONDS: Final = 20

# The report: REPORT_PREFIX and a ReportDict as ASCII JSON, one line, the last bytes of the log.
REPORT_PREFIX: Final = b"codeexec-report/v1 "
# Console entries the runner keeps: at most this many, and this many UTF-8 bytes of messages in total.
MAX_LOG_ENTRIES: Final = 1000
MAX_LOG_BYTES: Final = 64 * 1024

# Exit codes for the runner's own outcomes, as `docker run` (and timeout(1) for 124) use them.
EXIT_NOT_ISOLATED: Final = 122  # the NetworkPolicy was not enforced in time: the program was not started
EXIT_TIMEOUT: Final = 124
EXIT_RUNNER_ERROR: Final = 125  # invalid arguments or env file
EXIT_CANNOT_EXECUTE: Final = 126
EXIT_NOT_FOUND: Final = 127


class StreamDict(TypedDict):
    """What the runner kept of one output stream."""

    text: str  # the kept prefix, decoded as UTF-8
    bytes: int  # everything the program wrote
    truncated: bool


class LogEntryDict(TypedDict):
    """One console entry the harness sent over the channel."""

    level: str  # log, info, warn, error or debug
    time: str  # RFC 3339, UTC, milliseconds
    message: str


class IsolationDict(TypedDict):
    """What the isolation probe saw before the program could start."""

    probe: str  # HOST:PORT, [IPv6]:PORT
    isolated: bool
    waitedMs: int
    attempts: int


class ReportDict(TypedDict):
    """The report's JSON object; every key is always present."""

    exitCode: int
    timedOut: bool
    signal: int | None  # the signal that ended the program (9 after a timeout)
    durationMs: int
    stdout: StreamDict
    stderr: StreamDict
    hasResult: bool
    result: Any  # any JSON value; null when hasResult is false
    logs: list[LogEntryDict]
    logsTruncated: bool
    error: str | None
    networkIsolation: IsolationDict | None  # null without --isolation-probe
