"""Warm mode: pre-start the harness, say Ready, read the one request from stdin, hand it over, then run as cold."""

from __future__ import annotations

import contextlib
import json
import math
import os
import selectors
import signal
import time
from dataclasses import dataclass
from typing import NoReturn, cast

from codeexec_runner.arguments import Config
from codeexec_runner.contract import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NO_REQUEST,
    MAX_WARM_REQUEST_BYTES,
    WARM_ACCEPTED,
    WarmRequestDict,
    warm_compatible_env,
)
from codeexec_runner.environment import build_env, is_utf8, is_variable
from codeexec_runner.errors import RunnerError
from codeexec_runner.output import write_all
from codeexec_runner.process import kill_leftovers, reap
from codeexec_runner.program import (
    Ending,
    Program,
    collect,
    resolve_command,
    spawn,
    supervise,
    watch_signals,
)
from codeexec_runner.report import Outcome

# The harness reads its request (argv and env, one JSON object) from this fd until EOF.
REQUEST_FD = 4
REQUEST_FD_ENV = "CODEEXEC_REQUEST_FD"
# The pre-started harness's first channel message, once it has preloaded.
READY_MESSAGE = {"type": "ready"}
MAX_READY_BYTES = 4096
READ_CHUNK = 64 * 1024
STDIN_NAME = "stdin"
INPUT_NAME = "input.json"
READY_NAME = "ready"
# A code file by these names would overwrite the runner's own files in the warm directory.
RESERVED_NAMES = frozenset({STDIN_NAME, INPUT_NAME, READY_NAME, ".", ".."})
MAX_FILE_NAME_BYTES = 255


class Waited(Exception):
    """The wait ended without a request: the runner was stopped or its stdin failed it, or the harness
    failed (ended, or broke its protocol: then what it printed tells why)."""

    def __init__(self, message: str, exit_code: int, harness_failed: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.harness_failed = harness_failed


@dataclass(frozen=True)
class WarmFiles:
    """The warm directory: the request's files, and the ready file the pod's startupProbe looks for."""

    directory: str

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


def run_warm(config: Config) -> Outcome:
    """Pre-starts the harness, waits for it to preload, says Ready, reads one request from stdin, writes its
    files, hands the harness its argv and env, then supervises and collects exactly as the cold path."""
    files = prepare(config.warm_dir)
    # Until its request the program reads an empty file; the runner fills that file before the request.
    stdin_fd = os.open(files.path(STDIN_NAME), os.O_RDONLY)
    env = {**build_env(None, None, None), REQUEST_FD_ENV: str(REQUEST_FD)}
    executable = resolve_command(config.command, env)
    signals = watch_signals()
    request_r, request_w = os.pipe()
    program = spawn(config, executable, env, signals, stdin_fd, ((request_r, REQUEST_FD),))
    try:
        await_ready(program)
        create_ready_file(files)
        request = parse_request(read_request_line(program))
    except Waited as e:
        os.close(request_w)
        return abandon(program, e)
    write_all(1, WARM_ACCEPTED)
    try:
        delivered = deliver(request, files, request_w)
    except (OSError, ValueError) as e:  # /tmp full, say
        kill_leftovers(program.pid, program.usage)
        raise RunnerError(f"cannot write the request's files: {e}") from e
    program.started = time.monotonic()
    ending = supervise(program, request["timeoutSeconds"])
    outcome = collect(program, ending)
    if not delivered and outcome.error is None:
        outcome.error = "the harness ended before it received the request"
    return outcome


def prepare(directory: str) -> WarmFiles:
    files = WarmFiles(directory)
    try:
        os.makedirs(directory, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(files.path(READY_NAME))  # a leftover must not make the pod Ready before this run is
        with open(files.path(STDIN_NAME), "wb"):
            pass
    except OSError as e:
        raise RunnerError(f"cannot prepare the warm directory {directory}: {e.strerror}") from e
    return files


def await_ready(program: Program) -> None:
    """Reads the harness's first channel line, which must say it has preloaded; the rest is the channel's."""
    line = bytearray()
    while b"\n" not in line:
        wait_readable(program, program.channel_fd)
        try:
            chunk = os.read(program.channel_fd, MAX_READY_BYTES)
        except BlockingIOError:
            continue
        if not chunk:
            harness_broke("the harness closed its channel before it was ready")
        line += chunk
        if len(line) > MAX_READY_BYTES:
            harness_broke("the harness's first channel line is not its ready message")
    first, _, rest = bytes(line).partition(b"\n")
    try:
        if json.loads(first) != READY_MESSAGE:
            raise ValueError("not the ready message")
    except ValueError:
        harness_broke("the harness's first channel line is not its ready message")
    program.channel.feed(rest)


def harness_broke(message: str) -> NoReturn:
    raise Waited(message, EXIT_CANNOT_EXECUTE, harness_failed=True)


def create_ready_file(files: WarmFiles) -> None:
    os.close(os.open(files.path(READY_NAME), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))


def read_request_line(program: Program) -> bytes:
    """The first line of the runner's stdin, at most MAX_WARM_REQUEST_BYTES with its newline; then the
    runner stops reading stdin for good (fd 0 becomes /dev/null), so no second request reaches it."""
    line = bytearray()
    try:
        while True:
            wait_readable(program, 0)
            chunk = os.read(0, READ_CHUNK)
            if not chunk:
                cut = f" ({len(line)} bytes without a newline)" if line else ""
                raise Waited(f"stdin closed before a request arrived{cut}; no program ran", EXIT_NO_REQUEST)
            head, newline, _ = chunk.partition(b"\n")
            line += head
            if len(line) + len(newline) > MAX_WARM_REQUEST_BYTES:
                raise Waited(
                    f"the request is longer than {MAX_WARM_REQUEST_BYTES} bytes; no program ran", EXIT_NO_REQUEST
                )
            if newline:
                return bytes(line)
    finally:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)


def wait_readable(program: Program, fd: int) -> None:
    """Waits until `fd` is readable; raises Waited when the runner is asked to stop or the harness ends first."""
    signals = program.signals
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        selector.register(signals.wake_fd, selectors.EVENT_READ)
        while True:
            ready = {key.fd for key, _ in selector.select()}
            if signals.wake_fd in ready:
                os.read(signals.wake_fd, 4096)
            if signals.stop:
                name = signal.Signals(signals.stop[0]).name
                raise Waited(
                    f"runner received {name} while waiting for a request; no program ran", 128 + signals.stop[0]
                )
            if reap(program.pid, program.usage) is not None:
                harness_broke("the harness ended before a request arrived")
            if fd in ready:
                return


def abandon(program: Program, waited: Waited) -> Outcome:
    """Ends a wait that brought no request: kills the harness; reports what a failed harness printed."""
    kill_leftovers(program.pid, program.usage)
    if not waited.harness_failed:
        raise RunnerError(str(waited), waited.exit_code)
    # No program ran, so the report carries no exit status of one: only the runner's code and the reason.
    outcome = collect(program, Ending(wait_status=0, duration_ms=0))
    outcome.exit_code, outcome.error = waited.exit_code, str(waited)
    outcome.usage = None  # the harness never got a request: what it used is no program's
    return outcome


def parse_request(line: bytes) -> WarmRequestDict:
    try:
        value = json.loads(line.decode("ascii"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        invalid("not one line of ASCII JSON")
    if not isinstance(value, dict):
        invalid("not a JSON object")
    keys = WarmRequestDict.__required_keys__
    if set(value) != keys:
        invalid(f"its keys must be exactly {', '.join(sorted(keys))}")
    name, timeout = value["fileName"], value["timeoutSeconds"]
    if not isinstance(name, str) or not is_file_name(name):
        invalid(f"fileName {name!r} is not a plain file name")
    for key in ("code", "stdin"):
        if not isinstance(value[key], str) or not is_utf8(value[key]):
            invalid(f"{key} must be a string of Unicode characters")
    env = value["env"]
    if not isinstance(env, dict) or not all(is_variable(k, v) for k, v in env.items()):
        invalid("env must map variable names to strings")
    if not warm_compatible_env(env):
        invalid("env sets a variable the interpreter reads at its start; such a request must run cold")
    args = value["args"]
    if not isinstance(args, list) or not all(isinstance(a, str) and "\0" not in a and is_utf8(a) for a in args):
        invalid("args must be a list of strings")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        invalid("timeoutSeconds must be a positive number")
    return cast(WarmRequestDict, value)  # checked key by key above


def invalid(why: str) -> NoReturn:
    raise Waited(f"invalid request: {why}; no program ran", EXIT_NO_REQUEST)


def reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def is_file_name(name: str) -> bool:
    return (
        name not in RESERVED_NAMES
        and "/" not in name
        and "\0" not in name
        and is_utf8(name)
        and 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_FILE_NAME_BYTES
    )


def deliver(request: WarmRequestDict, files: WarmFiles, request_w: int) -> bool:
    """Writes the request's files, then the harness's argv and env to its request fd, and closes it;
    False when the harness was gone already."""
    code_path, input_path = files.path(request["fileName"]), files.path(INPUT_NAME)
    message = {"argv": [code_path, *request["args"]], "env": {"CODEEXEC_INPUT_FILE": input_path, **request["env"]}}
    try:
        write_file(code_path, request["code"].encode("utf-8"), 0o444)
        write_file(input_path, json.dumps(request["input"]).encode("ascii"), 0o444)
        with open(files.path(STDIN_NAME), "wb") as stdin:  # the harness's fd 0 has it open already
            stdin.write(request["stdin"].encode("utf-8"))
        write_all(request_w, json.dumps(message).encode("ascii"))
    except BrokenPipeError:
        return False
    finally:
        os.close(request_w)
    return True


def write_file(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
