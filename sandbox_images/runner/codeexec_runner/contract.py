"""The runner↔operator contract, defined once: the runner's path and flags, the report line and its schema, caps.

Standard library only: the runner (in every sandbox image) and the operator (`codeexec`) both
import this module, so neither keeps a copy. sandbox_images/README.md describes it in prose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypedDict

# Where every sandbox image carries the runner (a zipapp of this package); the pod's command.
RUNNER_PATH: Final = "/opt/codeexec/runner"

# The runner's flags; the program's command follows "--".
TIMEOUT_SECONDS_FLAG: Final = "--timeout-seconds"  # required
MAX_OUTPUT_BYTES_FLAG: Final = "--max-output-bytes"  # required
STDIN_FLAG: Final = "--stdin"
INPUT_FLAG: Final = "--input"
ENV_FILE_FLAG: Final = "--env-file"
# A BindingsFileDict (cold path only: an Execution with bindings never goes warm); the runner gives the
# program its fields as CODEEXEC_BROKER_URL, CODEEXEC_BINDING_TOKEN, CODEEXEC_EXECUTION, CODEEXEC_BINDINGS.
BINDINGS_FILE_FLAG: Final = "--bindings-file"
ISOLATION_PROBE_FLAG: Final = "--isolation-probe"
ISOLATION_WAIT_SECONDS_FLAG: Final = "--isolation-wait-seconds"

# Warm mode (a pool pod started before its Execution exists): the runner pre-starts the harness,
# then waits for ONE request on its own stdin (the container's stdin, which the operator writes
# through the API server's pods/attach) instead of reading /code files. Its command line is
#   runner --warm --max-output-bytes B [--isolation-probe HOST:PORT --isolation-wait-seconds 20]
#          -- <Runtime.command...>
# (no --timeout-seconds: the request carries it; without --warm it stays required).
WARM_FLAG: Final = "--warm"
# Where warm mode keeps its files instead of WARM_DIR: for running the runner outside a pod (the
# tests, on a shared host's /tmp); the operator never passes it.
WARM_DIR_FLAG: Final = "--warm-dir"
# Where the warm runner writes the request's code file, stdin and input.json (in the /tmp emptyDir).
WARM_DIR: Final = "/tmp/.codeexec"
# Created (as WARM_DIR/ready) only once the isolation probe saw the NetworkPolicy in force and the pre-started harness
# reported it has preloaded; the pool pod's startupProbe is `exec: ["test", "-e", WARM_READY_FILE]`,
# so a pod is Ready (may be offered) only then.
WARM_READY_FILE: Final = "/tmp/.codeexec/ready"
# The runner writes this line to its stdout as soon as it has read one complete, valid request and
# before the program receives it: the delivery acknowledgement the operator reads on the attach
# stream. Nothing reaches stdout before it in warm mode, except a failed isolation probe's report.
WARM_ACCEPTED: Final = b"codeexec-accepted/v1\n"
# The request is ONE line of ASCII JSON (a WarmRequestDict) ending in "\n", at most this long.
MAX_WARM_REQUEST_BYTES: Final = 4 * 1024 * 1024

# How long the runner waits for the pod's NetworkPolicy to be enforced before it gives up without
# running the code (enforcers program a new pod's rules moments after it starts). The runner's
# default; the operator passes it and adds it to the pod's activeDeadlineSeconds. Long enough to ride
# out an API server restart: the enforcer learns of a new pod only from the API server, and with 20 s a
# sandbox started as the API server went down (10 s outage, then its restart) failed NetworkNotIsolated.
ISOLATION_WAIT_SECONDS: Final = 60

# The report: REPORT_PREFIX and a ReportDict as ASCII JSON, one line, the last bytes of the log.
REPORT_PREFIX: Final = b"codeexec-report/v1 "
# Console entries the runner keeps: at most this many, and this many UTF-8 bytes of messages in total.
MAX_LOG_ENTRIES: Final = 1000
MAX_LOG_BYTES: Final = 64 * 1024

# Exit codes for the runner's own outcomes, as `docker run` (and timeout(1) for 124) use them.
# Warm mode: stdin closed, or the request was invalid or oversized, before a complete valid
# request arrived: the program never saw a request (the report's `error` says why).
EXIT_NO_REQUEST: Final = 123
EXIT_NOT_ISOLATED: Final = 122  # the NetworkPolicy was not enforced in time: the program was not started
EXIT_TIMEOUT: Final = 124
EXIT_RUNNER_ERROR: Final = 125  # invalid arguments, env file or bindings file
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


class UsageDict(TypedDict):
    """What the program's processes used, from the rusage of every process the runner reaped (wait4).

    cpuMs: user + system CPU time of the program and all its descendants, in milliseconds.
    peakMemoryBytes: the largest resident set size (ru_maxrss) that any ONE of those processes
    reached, as the kernel accounts it (under gVisor: the Sentry's accounting of the sandbox's
    processes). It is not the sum over processes running at once, not the container's cgroup peak,
    and it leaves out files in the in-memory /tmp, which also count toward the memory limit.
    """

    cpuMs: int
    peakMemoryBytes: int


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
    usage: UsageDict | None  # null when no program ran (it could not start, or no warm request came)


class BindingsFileDict(TypedDict):
    """The --bindings-file (/code/bindings.json): how the program reaches the broker; exactly these keys."""

    url: str  # http://<broker Service clusterIP>:<port>: sandboxes have no DNS
    token: str  # the Execution's binding token
    execution: str  # "<namespace>/<name>"
    bindings: dict[str, str]  # spec.bindings: binding name -> type ("db")


class WarmRequestDict(TypedDict):
    """The one request a warm runner reads from its stdin: what the cold path takes from /code and its flags."""

    fileName: str  # the code file's name, e.g. "main.py": a plain name, no directory part
    code: str
    input: Any  # any JSON value; null when absent
    stdin: str
    env: dict[str, str]  # spec.env
    args: list[str]  # spec.args
    timeoutSeconds: float  # positive; the clock starts when the program gets the request


# Environment variables the interpreters read when they start (PYTHONPATH, NODE_OPTIONS,
# UV_THREADPOOL_SIZE, LD_PRELOAD, TS_NODE_*): a pre-started interpreter cannot honour them, so the
# operator sends an Execution whose spec.env names one of them to the cold path, and a warm runner
# refuses a request that carries one (exit EXIT_NO_REQUEST).
WARM_STARTUP_ENV_PREFIXES: Final[tuple[str, ...]] = ("PYTHON", "NODE", "UV_", "LD_", "TS_NODE")


def warm_compatible_env(env: Mapping[str, str]) -> bool:
    """Whether a warm (pre-started) sandbox honours `env` exactly as a cold one would."""
    return not any(name.startswith(WARM_STARTUP_ENV_PREFIXES) for name in env)
