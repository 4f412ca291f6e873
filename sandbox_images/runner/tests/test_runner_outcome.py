"""In-process tests of how the program's end becomes the outcome and the report line (program, report)."""

from __future__ import annotations

import json
import resource
import signal

from codeexec_runner.channel import Channel
from codeexec_runner.contract import EXIT_TIMEOUT, REPORT_PREFIX, ReportDict
from codeexec_runner.isolation import Isolation
from codeexec_runner.output import Capture
from codeexec_runner.process import Usage
from codeexec_runner.program import Ending, outcome_of
from codeexec_runner.report import Outcome, report_json, report_line


def exited(code: int) -> int:
    return code << 8  # a wait status, as waitpid returns it


def killed(signum: int) -> int:
    return signum


def outcome(ending: Ending) -> Outcome:
    return outcome_of(ending, Capture(0, 1), Capture(0, 1), Channel(0))


def test_exit_code_and_signal_of_the_program() -> None:
    assert (outcome(Ending(exited(3), 12)).exit_code, outcome(Ending(exited(3), 12)).signal) == (3, None)
    by_signal = outcome(Ending(killed(signal.SIGSEGV), 5))
    assert (by_signal.exit_code, by_signal.signal, by_signal.error) == (128 + signal.SIGSEGV, signal.SIGSEGV, None)
    assert by_signal.duration_ms == 5 and not by_signal.timed_out


def test_timeout_is_124_with_the_kill_signal() -> None:
    timed_out = outcome(Ending(killed(signal.SIGKILL), 1000, timed_out=True))
    assert (timed_out.exit_code, timed_out.signal, timed_out.timed_out) == (EXIT_TIMEOUT, signal.SIGKILL, True)


def test_stopped_runner_exits_128_plus_its_signal_and_says_why() -> None:
    stopped = outcome(Ending(killed(signal.SIGKILL), 7, stopped_by=signal.SIGTERM))
    assert stopped.exit_code == 128 + signal.SIGTERM and not stopped.timed_out
    assert stopped.error == "runner received SIGTERM; the program was killed"


def test_report_of_a_program_that_never_ran_has_every_key() -> None:
    report = report_json(Outcome(exit_code=125, error="invalid runner arguments: x"))
    assert set(report) == ReportDict.__required_keys__
    empty = {"text": "", "bytes": 0, "truncated": False}
    assert report == {
        "exitCode": 125,
        "timedOut": False,
        "signal": None,
        "durationMs": 0,
        "stdout": empty,
        "stderr": empty,
        "hasResult": False,
        "result": None,
        "logs": [],
        "logsTruncated": False,
        "error": "invalid runner arguments: x",
        "networkIsolation": None,
        "usage": None,
    }


def test_the_program_error_wins_over_the_channel_error() -> None:
    channel = Channel(100)
    channel.feed(b"garbage\n")
    assert report_json(Outcome(exit_code=0, channel=channel))["error"] == "malformed channel line: not JSON"
    assert report_json(Outcome(exit_code=143, error="stopped", channel=channel))["error"] == "stopped"


def test_report_line_is_one_ascii_line_after_a_newline() -> None:
    channel = Channel(100)
    channel.feed(b'{"type": "result", "value": "caf\\u00e9\\ud800"}\n')
    isolation = Isolation("[::1]:443", True, 12, 1)
    line = report_line(Outcome(exit_code=0, channel=channel, isolation=isolation))
    assert line.startswith(b"\n" + REPORT_PREFIX) and line.endswith(b"}\n") and line.count(b"\n") == 2
    assert line.isascii() and b" " not in line[len(REPORT_PREFIX) + 1 :]  # compact separators
    report = json.loads(line[len(REPORT_PREFIX) + 1 :])
    assert report["result"] == "caf\u00e9\ud800"
    assert report["networkIsolation"] == {"probe": "[::1]:443", "isolated": True, "waitedMs": 12, "attempts": 1}


def test_usage_sums_cpu_and_keeps_the_largest_rss_of_the_reaped_children() -> None:
    usage = Usage()
    for utime, stime, maxrss in ((0.25, 0.125, 1000), (0.5, 0.0, 3000), (0.0, 0.001, 2000)):
        usage.add(resource.struct_rusage((utime, stime, maxrss, *[0] * 13)))
    assert usage.to_json() == {"cpuMs": 876, "peakMemoryBytes": 3000 * 1024}
    assert report_json(Outcome(exit_code=0, usage=usage))["usage"] == usage.to_json()
