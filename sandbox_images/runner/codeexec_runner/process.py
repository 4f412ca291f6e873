"""The runner as a process: hardening itself, reaping children, killing what the program left behind."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import time
from dataclasses import dataclass

from codeexec_runner.contract import UsageDict
from codeexec_runner.errors import RunnerError

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
# After the program ends: how long killing the leftovers may take before the runner reports
# anyway (only reached when something unkillable survives).
KILL_GRACE_SECONDS = 2.0


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


def is_init() -> bool:
    return os.getpid() == 1


@dataclass
class Usage:
    """The resources of every child the runner reaped, as wait4 reports them for each."""

    cpu_seconds: float = 0.0  # user + system time, summed over the reaped children
    max_rss_kib: int = 0  # the largest ru_maxrss (KiB on Linux) of any one of them

    def add(self, rusage: resource.struct_rusage) -> None:
        # A reaped child's rusage covers itself and the descendants it waited for; the orphans it
        # did not wait for are reparented to the runner (PID 1 or subreaper) and reaped here too.
        self.cpu_seconds += rusage.ru_utime + rusage.ru_stime
        self.max_rss_kib = max(self.max_rss_kib, rusage.ru_maxrss)

    def to_json(self) -> UsageDict:
        return {"cpuMs": int(self.cpu_seconds * 1000), "peakMemoryBytes": self.max_rss_kib * 1024}


def reap(program_pid: int, usage: Usage | None = None) -> int | None:
    """Reaps every exited child (as PID 1 that includes orphans), adding each one's rusage to `usage`;
    returns the program's wait status."""
    status = None
    while True:
        try:
            pid, wait_status, rusage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if pid == 0:
            return status
        if usage is not None:
            usage.add(rusage)
        if pid == program_pid:
            status = wait_status


def kill_leftovers(program_pid: int, usage: Usage | None = None) -> None:
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
        reap(program_pid, usage)
        time.sleep(0.005)
