#!/usr/bin/python3 -I
"""Sandbox runner: PID 1 of every sandbox container; runs the program, enforces the timeout, reports the outcome.

The contract this file implements is sandbox_images/README.md. Python standard library only,
so the same file runs in every image (Debian bookworm's python3.11).
"""

from __future__ import annotations

import argparse
import codecs
import ctypes
import ipaddress
import json
import os
import re
import selectors
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

REPORT_PREFIX = b"codeexec-report/v1 "
ECHO_LIMIT = 1024 * 1024  # bytes of each stream shown live in the container log
ECHO_NOTICE = b"[codeexec: further output not shown in the log]\n"
MAX_LOG_ENTRIES = 1000
MAX_LOG_BYTES = 64 * 1024  # UTF-8 bytes of log messages kept in total
# Deeper results could exceed the recursion limit of json.dumps when the report is written.
MAX_RESULT_DEPTH = 100
LOG_LEVELS = frozenset({"log", "info", "warn", "error", "debug"})
RFC3339_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
READ_CHUNK = 64 * 1024
CHANNEL_FD = 3
# After the program ends: how long killing the leftovers and draining the pipes may take before
# the runner reports anyway (only reached when something unkillable keeps a pipe open).
KILL_GRACE_SECONDS = 2.0
DRAIN_GRACE_SECONDS = 2.0
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
# Exit codes for failures of the runner itself, as `docker run` uses them.
EXIT_RUNNER_ERROR = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_TIMEOUT = 124
# The pod's NetworkPolicy was not enforced in time: the program was not started.
EXIT_NOT_ISOLATED = 122
# The isolation probe: how long to wait for the policy, how often to try, how long one connect may take.
DEFAULT_ISOLATION_WAIT_SECONDS = 20.0
ISOLATION_RETRY_SECONDS = 0.15
ISOLATION_CONNECT_TIMEOUT = 1.0


class RunnerError(Exception):
    """A failure before the program could start; carries the exit code to report."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNNER_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _ArgumentParser(argparse.ArgumentParser):
    # argparse would print usage and exit 2 without a report; the operator needs the report.
    def error(self, message: str) -> NoReturn:
        raise RunnerError(f"invalid runner arguments: {message}")


@dataclass
class Config:
    timeout_seconds: float
    max_output_bytes: int
    stdin_path: str | None
    input_path: str | None
    env_file: str | None
    command: list[str]
    isolation_probe: tuple[str, int] | None
    isolation_wait_seconds: float


def parse_args(argv: list[str]) -> Config:
    parser = _ArgumentParser(prog="runner", description="Run a sandboxed program and report its outcome.")
    parser.add_argument("--timeout-seconds", type=float, required=True)
    parser.add_argument("--max-output-bytes", type=int, required=True)
    parser.add_argument("--stdin", dest="stdin_path")
    parser.add_argument("--input", dest="input_path")
    parser.add_argument("--env-file")
    parser.add_argument("--isolation-probe", metavar="HOST:PORT")
    parser.add_argument("--isolation-wait-seconds", type=float, default=DEFAULT_ISOLATION_WAIT_SECONDS)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise RunnerError("invalid runner arguments: no command after --")
    if args.timeout_seconds <= 0:
        raise RunnerError("invalid runner arguments: --timeout-seconds must be positive")
    if args.max_output_bytes < 0:
        raise RunnerError("invalid runner arguments: --max-output-bytes must not be negative")
    if args.isolation_wait_seconds < 0:
        raise RunnerError("invalid runner arguments: --isolation-wait-seconds must not be negative")
    probe = parse_probe(args.isolation_probe) if args.isolation_probe is not None else None
    return Config(
        args.timeout_seconds,
        args.max_output_bytes,
        args.stdin_path,
        args.input_path,
        args.env_file,
        command,
        probe,
        args.isolation_wait_seconds,
    )


def parse_probe(text: str) -> tuple[str, int]:
    """Parses "10.0.0.1:443" or "[fd00::1]:443" into (address, port): an IP address, never a name (no DNS)."""
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
        number = int(port)
    except ValueError:
        address, number = None, 0
    if address is None or not 0 < number < 65536 or (address.version == 6) != bracketed:
        raise RunnerError(f"invalid runner arguments: --isolation-probe {text!r} is not IPV4:PORT or [IPV6]:PORT")
    return str(address), number


@dataclass
class Isolation:
    """What the isolation probe saw: the program may start only when `isolated`."""

    probe: str
    isolated: bool
    waited_ms: int
    attempts: int

    def to_json(self) -> dict[str, Any]:
        return {"probe": self.probe, "isolated": self.isolated, "waitedMs": self.waited_ms, "attempts": self.attempts}


def wait_for_isolation(probe: tuple[str, int], wait_seconds: float) -> Isolation:
    """Connects to the probe address (one the pod's NetworkPolicy denies) until that fails. Enforcers
    program a new pod's rules moments after it starts; until then the code could reach anything.
    Refused, timed out or unreachable all mean the policy is in force; a connection means it is not
    yet, and after `wait_seconds` that it will not be (no enforcer): fail closed."""
    host, port = probe
    label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        reachable = can_connect(host, port)
        waited_ms = int((time.monotonic() - started) * 1000)
        if not reachable:
            return Isolation(label, True, waited_ms, attempts)
        if waited_ms >= wait_seconds * 1000:
            return Isolation(label, False, waited_ms, attempts)
        time.sleep(ISOLATION_RETRY_SECONDS)


def can_connect(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(ISOLATION_CONNECT_TIMEOUT)
        try:
            sock.connect((host, port))
        except OSError:  # refused, timed out, unreachable, or not permitted
            return False
    return True


def build_env(config: Config) -> dict[str, str]:
    """The program's environment, from scratch: nothing of the runner's (kubelet-injected) env leaks."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "CODEEXEC_CHANNEL_FD": str(CHANNEL_FD),
    }
    if config.input_path is not None:
        env["CODEEXEC_INPUT_FILE"] = config.input_path
    if config.env_file is not None:
        env.update(read_env_file(config.env_file))
    return env


def read_env_file(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            pairs = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise RunnerError(f"cannot read env file {path}: {e}") from e
    if not isinstance(pairs, dict):
        raise RunnerError(f"env file {path} must hold a JSON object")
    for name, value in pairs.items():
        if not isinstance(value, str) or not name or "=" in name or "\0" in name + value or not is_utf8(name + value):
            raise RunnerError(f"env file {path}: invalid variable {name!r}")
    return pairs


def is_utf8(text: str) -> bool:
    # JSON escapes can produce lone surrogates, which no environment can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def prctl(option: int, value: int, name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise RunnerError(f"prctl({name}) failed: {os.strerror(ctypes.get_errno())}")


def harden() -> None:
    # The program runs under the same uid; non-dumpable keeps it out of /proc/1/{environ,fd,mem}
    # and ptrace, so it cannot read the runner's environment or write to its pipes.
    prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    if not is_init():
        # Outside a container, orphans of the program are reparented to the runner instead of
        # the host's init, so the runner reaps them itself when it kills them.
        prctl(PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER")


class Capture:
    """One output stream: keeps the first `limit` bytes, counts all, echoes the first MiB to the log."""

    def __init__(self, limit: int, echo_fd: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.total = 0
        self.echo_fd: int | None = echo_fd
        self.echoed = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self._echo(chunk)

    def _echo(self, chunk: bytes) -> None:
        if self.echo_fd is None or self.echoed > ECHO_LIMIT:
            return
        part = chunk[: ECHO_LIMIT - self.echoed]
        if len(part) < len(chunk):
            part += b"\n" + ECHO_NOTICE
            self.echoed = ECHO_LIMIT + 1  # marks the notice as written
        else:
            self.echoed += len(part)
        if part:
            try:
                write_all(self.echo_fd, part)
            except OSError:
                self.echo_fd = None  # nobody reads our log any more; keep capturing regardless

    def to_json(self) -> dict[str, Any]:
        truncated = self.total > len(self.kept)
        # A truncated prefix may end inside a multi-byte character: that is a cut, not invalid
        # data, so the incomplete tail is dropped rather than replaced.
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(bytes(self.kept), final=not truncated)
        return {"text": text, "bytes": self.total, "truncated": truncated}


class Channel:
    """The harness channel (fd 3): JSON lines carrying logs and the result, with bounded memory."""

    def __init__(self, max_result_bytes: int) -> None:
        self.max_result_bytes = max_result_bytes
        self.line_limit = max_result_bytes + MAX_LOG_BYTES + 1024  # room for one JSON envelope
        self.pending = bytearray()
        self.discarding = False
        self.has_result = False
        self.result: Any = None
        self.logs: list[dict[str, str]] = []
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


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def is_init() -> bool:
    return os.getpid() == 1


def reap(program_pid: int) -> int | None:
    """Reaps every exited child (as PID 1 that includes orphans); returns the program's wait status."""
    status = None
    while True:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if pid == program_pid:
            status = wait_status


def kill_leftovers(program_pid: int) -> None:
    """SIGKILLs everything the program left behind, repeating until nothing is left (fork loops)."""
    give_up = time.monotonic() + KILL_GRACE_SECONDS
    while time.monotonic() < give_up:
        try:
            if is_init():
                os.kill(-1, signal.SIGKILL)  # as PID 1: every other process of the container
            else:
                # Outside a container (tests, local use) kill(-1) would hit the user's own
                # processes; the program's process group is the best available scope.
                os.killpg(program_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        reap(program_pid)
        time.sleep(0.005)


def resolve_command(command: list[str], env: dict[str, str]) -> str:
    executable = shutil.which(command[0], path=env["PATH"]) if "/" not in command[0] else command[0]
    if executable is None or not os.path.exists(executable):
        raise RunnerError(f"command not found: {command[0]}", EXIT_NOT_FOUND)
    return executable


def open_stdin(path: str | None) -> int:
    try:
        return os.open(path or os.devnull, os.O_RDONLY)
    except OSError:
        return os.open(os.devnull, os.O_RDONLY)  # a missing stdin file means empty stdin


@dataclass
class Outcome:
    exit_code: int
    timed_out: bool = False
    signal: int | None = None
    duration_ms: int = 0
    error: str | None = None
    stdout: Capture | None = None
    stderr: Capture | None = None
    channel: Channel | None = None
    isolation: Isolation | None = None


def run(config: Config) -> Outcome:
    env = build_env(config)
    executable = resolve_command(config.command, env)
    stop_signal: list[int] = []

    def on_stop(signum: int, _frame: object) -> None:
        stop_signal.append(signum)

    # Every signal with a Python handler writes to the wakeup fd, which wakes the select loop:
    # SIGCHLD tells the program exited, SIGTERM/SIGINT ask the runner to stop.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)

    # Both streams are echoed to the runner's stdout: the container runtime copies stdout and
    # stderr into the log independently, so a stderr line written just before the report could
    # land after it; one stream keeps the report the log's final line. (`kubectl logs` merges the
    # streams anyway; the report keeps them apart.)
    stdout = Capture(config.max_output_bytes, sys.stdout.fileno())
    stderr = Capture(config.max_output_bytes, sys.stdout.fileno())
    channel = Channel(config.max_output_bytes)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    chan_r, chan_w = os.pipe()
    stdin_fd = open_stdin(config.stdin_path)
    try:
        pid = os.posix_spawn(
            executable,
            config.command,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin_fd, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
                (os.POSIX_SPAWN_DUP2, chan_w, CHANNEL_FD),
            ],
            setsid=True,
            # Python ignores these; ignored dispositions survive exec, so restore the defaults.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as e:
        raise RunnerError(f"cannot execute {config.command[0]}: {e.strerror}", EXIT_CANNOT_EXECUTE) from e
    started = time.monotonic()
    for fd in (out_w, err_w, chan_w, stdin_fd):
        os.close(fd)

    sinks = {out_r: stdout.feed, err_r: stderr.feed, chan_r: channel.feed}
    selector = selectors.DefaultSelector()
    for fd in sinks:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)

    deadline = started + config.timeout_seconds
    timed_out = False
    stopped_by: int | None = None
    status = reap(pid)
    while status is None:
        killed = timed_out or stopped_by is not None
        for key, _ in selector.select(None if killed else max(0.0, deadline - time.monotonic())):
            if key.fd == wake_r:
                os.read(wake_r, 4096)
            else:
                read_available(selector, key.fd, sinks)
        status = reap(pid)
        if status is None and not killed and (stop_signal or time.monotonic() >= deadline):
            if stop_signal:
                stopped_by = stop_signal[0]
            else:
                timed_out = True
            os.killpg(pid, signal.SIGKILL)  # the whole group: ignoring SIGTERM does not help
    duration_ms = int((time.monotonic() - started) * 1000)

    kill_leftovers(pid)
    drain(selector, sinks, wake_r)
    channel.finish()

    outcome = Outcome(exit_code=0, duration_ms=duration_ms, stdout=stdout, stderr=stderr, channel=channel)
    if os.WIFSIGNALED(status):
        outcome.signal = os.WTERMSIG(status)
        outcome.exit_code = 128 + outcome.signal
    else:
        outcome.exit_code = os.WEXITSTATUS(status)
    if timed_out:
        outcome.timed_out = True
        outcome.exit_code = EXIT_TIMEOUT
    elif stopped_by is not None:
        # The container is being stopped (pod deleted, activeDeadlineSeconds): report what we have.
        outcome.exit_code = 128 + stopped_by
        outcome.error = f"runner received {signal.Signals(stopped_by).name}; the program was killed"
    return outcome


def read_available(selector: selectors.BaseSelector, fd: int, sinks: dict[int, Any]) -> None:
    try:
        chunk = os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return
    if chunk:
        sinks[fd](chunk)
    else:
        selector.unregister(fd)
        os.close(fd)


def drain(selector: selectors.BaseSelector, sinks: dict[int, Any], wake_r: int) -> None:
    """Reads what is left in the pipes until every writer is gone (or the grace runs out)."""
    give_up = time.monotonic() + DRAIN_GRACE_SECONDS
    while any(fd in sinks for fd in selector.get_map()) and time.monotonic() < give_up:
        for key, _ in selector.select(max(0.0, give_up - time.monotonic())):
            if key.fd == wake_r:
                os.read(wake_r, 4096)
            else:
                read_available(selector, key.fd, sinks)


def report_json(outcome: Outcome) -> dict[str, Any]:
    channel = outcome.channel or Channel(0)
    empty = {"text": "", "bytes": 0, "truncated": False}
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
    }


def write_report(outcome: Outcome) -> None:
    # ensure_ascii: a result may hold lone surrogates (valid JSON escapes) that UTF-8 cannot encode.
    line = json.dumps(report_json(outcome), ensure_ascii=True, separators=(",", ":"))
    write_all(sys.stdout.fileno(), b"\n" + REPORT_PREFIX + line.encode("ascii") + b"\n")


def main(argv: list[str]) -> int:
    isolation = None
    try:
        harden()
        config = parse_args(argv)
        if config.isolation_probe is not None:
            isolation = wait_for_isolation(config.isolation_probe, config.isolation_wait_seconds)
            if not isolation.isolated:
                raise RunnerError(
                    f"network isolation not in effect: {isolation.probe} was still reachable after "
                    f"{isolation.waited_ms / 1000:.1f} s; the program was not started",
                    EXIT_NOT_ISOLATED,
                )
        outcome = run(config)
    except RunnerError as e:
        write_all(sys.stdout.fileno(), f"codeexec runner: {e}\n".encode())
        outcome = Outcome(exit_code=e.exit_code, error=str(e))
    outcome.isolation = isolation
    write_report(outcome)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
