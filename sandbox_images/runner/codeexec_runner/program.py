"""Runs the program: spawn it, supervise it until it exits, times out or the runner is stopped, collect its outcome."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from codeexec_runner.arguments import Config
from codeexec_runner.channel import CHANNEL_FD, Channel
from codeexec_runner.contract import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_TIMEOUT
from codeexec_runner.environment import build_env
from codeexec_runner.errors import RunnerError
from codeexec_runner.output import Capture
from codeexec_runner.process import Usage, kill_leftovers, reap
from codeexec_runner.report import Outcome

READ_CHUNK = 64 * 1024
# After the program ends: how long draining the pipes may take before the runner reports anyway
# (only reached when something unkillable keeps a pipe open).
DRAIN_GRACE_SECONDS = 2.0


@dataclass
class Signals:
    """Signals as events of the select loop: each one wakes it through `wake_fd`."""

    wake_fd: int
    stop: list[int] = field(default_factory=list)  # SIGTERM/SIGINT received, in order


@dataclass
class Program:
    """The running program: its pid, when it started, and where each of its pipes goes."""

    pid: int
    started: float  # when the program got its work: its spawn (cold) or its request (warm)
    stdout: Capture
    stderr: Capture
    channel: Channel
    channel_fd: int  # the runner's end of the channel
    selector: selectors.BaseSelector
    sinks: dict[int, Callable[[bytes], None]]
    signals: Signals
    usage: Usage = field(default_factory=Usage)  # of every child reaped so far


@dataclass(frozen=True)
class Ending:
    """How the program's run ended, as supervision saw it."""

    wait_status: int
    duration_ms: int
    timed_out: bool = False
    stopped_by: int | None = None  # the signal that stopped the runner


def run(config: Config) -> Outcome:
    """The cold path: the program's files are named by the flags; it starts with them at once."""
    assert config.timeout_seconds is not None  # parse_args requires it without --warm
    env = build_env(config.input_path, config.env_file, config.bindings_file)
    executable = resolve_command(config.command, env)
    signals = watch_signals()
    program = spawn(config, executable, env, signals, open_stdin(config.stdin_path))
    ending = supervise(program, config.timeout_seconds)
    return collect(program, ending)


def resolve_command(command: list[str], env: dict[str, str]) -> str:
    executable = shutil.which(command[0], path=env["PATH"]) if "/" not in command[0] else command[0]
    if executable is None or not os.path.exists(executable):
        raise RunnerError(f"command not found: {command[0]}", EXIT_NOT_FOUND)
    return executable


def watch_signals() -> Signals:
    # Every signal with a Python handler writes to the wakeup fd, which wakes the select loop:
    # SIGCHLD tells the program exited, SIGTERM/SIGINT ask the runner to stop.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signals = Signals(wake_r)

    def on_stop(signum: int, _frame: object) -> None:
        signals.stop.append(signum)

    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    return signals


def spawn(
    config: Config,
    executable: str,
    env: dict[str, str],
    signals: Signals,
    stdin_fd: int,
    more_fds: tuple[tuple[int, int], ...] = (),
) -> Program:
    """Starts the program in its own session, stdin from `stdin_fd`, stdout/stderr/channel on pipes the
    runner reads, and each (fd, target) of `more_fds` as its fd `target`; closes the runner's copies."""
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
                *((os.POSIX_SPAWN_DUP2, fd, target) for fd, target in more_fds),
            ],
            setsid=True,
            # Python ignores these; ignored dispositions survive exec, so restore the defaults.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as e:
        raise RunnerError(f"cannot execute {config.command[0]}: {e.strerror}", EXIT_CANNOT_EXECUTE) from e
    started = time.monotonic()
    for fd in (out_w, err_w, chan_w, stdin_fd, *(fd for fd, _ in more_fds)):
        os.close(fd)

    sinks: dict[int, Callable[[bytes], None]] = {out_r: stdout.feed, err_r: stderr.feed, chan_r: channel.feed}
    selector = selectors.DefaultSelector()
    for fd in sinks:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    selector.register(signals.wake_fd, selectors.EVENT_READ)
    return Program(pid, started, stdout, stderr, channel, chan_r, selector, sinks, signals)


def open_stdin(path: str | None) -> int:
    try:
        return os.open(path or os.devnull, os.O_RDONLY)
    except OSError:
        return os.open(os.devnull, os.O_RDONLY)  # a missing stdin file means empty stdin


def supervise(program: Program, timeout_seconds: float) -> Ending:
    """Pumps the program's output until it exits; at the deadline, or when the runner is asked to
    stop, SIGKILLs its whole process group (ignoring SIGTERM does not help) and waits for its exit."""
    deadline = program.started + timeout_seconds
    timed_out = False
    stopped_by: int | None = None
    status = reap(program.pid, program.usage)
    while status is None:
        killed = timed_out or stopped_by is not None
        pump(program, None if killed else max(0.0, deadline - time.monotonic()))
        status = reap(program.pid, program.usage)
        if status is None and not killed and (program.signals.stop or time.monotonic() >= deadline):
            if program.signals.stop:
                stopped_by = program.signals.stop[0]
            else:
                timed_out = True
            os.killpg(program.pid, signal.SIGKILL)
    duration_ms = int((time.monotonic() - program.started) * 1000)
    return Ending(status, duration_ms, timed_out, stopped_by)


def collect(program: Program, ending: Ending) -> Outcome:
    """Kills what the program left behind and drains its pipes: then its output is complete."""
    kill_leftovers(program.pid, program.usage)
    drain(program)
    program.channel.finish()
    # Whatever exited while draining counts too; then every process the program made is reaped.
    reap(program.pid, program.usage)
    outcome = outcome_of(ending, program.stdout, program.stderr, program.channel)
    outcome.usage = program.usage
    return outcome


def outcome_of(ending: Ending, stdout: Capture, stderr: Capture, channel: Channel) -> Outcome:
    outcome = Outcome(exit_code=0, duration_ms=ending.duration_ms, stdout=stdout, stderr=stderr, channel=channel)
    if os.WIFSIGNALED(ending.wait_status):
        outcome.signal = os.WTERMSIG(ending.wait_status)
        outcome.exit_code = 128 + outcome.signal
    else:
        outcome.exit_code = os.WEXITSTATUS(ending.wait_status)
    if ending.timed_out:
        outcome.timed_out = True
        outcome.exit_code = EXIT_TIMEOUT
    elif ending.stopped_by is not None:
        # The container is being stopped (pod deleted, activeDeadlineSeconds): report what we have.
        outcome.exit_code = 128 + ending.stopped_by
        outcome.error = f"runner received {signal.Signals(ending.stopped_by).name}; the program was killed"
    return outcome


def pump(program: Program, timeout: float | None) -> None:
    """Waits up to `timeout` for output or a signal, and hands what arrived to its sink."""
    for key, _ in program.selector.select(timeout):
        if key.fd == program.signals.wake_fd:
            os.read(program.signals.wake_fd, 4096)
        else:
            read_available(program, key.fd)


def read_available(program: Program, fd: int) -> None:
    try:
        chunk = os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return
    if chunk:
        program.sinks[fd](chunk)
    else:
        program.selector.unregister(fd)
        os.close(fd)


def drain(program: Program) -> None:
    """Reads what is left in the pipes until every writer is gone (or the grace runs out)."""
    give_up = time.monotonic() + DRAIN_GRACE_SECONDS
    while any(fd in program.sinks for fd in program.selector.get_map()) and time.monotonic() < give_up:
        pump(program, max(0.0, give_up - time.monotonic()))
