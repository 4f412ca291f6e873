"""The runner's report: only the log's final line counts, parsing is strict and memory bounded."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from codeexec.report import REPORT_PREFIX, ReportScanner, parse_report
from tests.unit.factories import report_data, report_line


def test_report_as_the_runner_writes_it() -> None:
    log = b"hello\n" + b"\n" + report_line() + b"\n"
    report = parse_report(log)
    assert report is not None
    assert report.exit_code == 0
    assert report.timed_out is False
    assert report.signal is None
    assert report.duration_ms == 1234
    assert (report.stdout.text, report.stdout.bytes, report.stdout.truncated) == ("hello\n", 6, False)
    assert report.has_result is True
    assert report.result == {"sum": 6}
    assert [(entry.level, entry.message) for entry in report.logs] == [("info", "summing")]
    assert report.logs_truncated is False
    assert report.error is None


def test_network_isolation_record() -> None:
    report = parse_report(report_line() + b"\n")
    assert report is not None and report.network_isolation is not None
    isolation = report.network_isolation
    assert (isolation.probe, isolation.isolated, isolation.waited_ms, isolation.attempts) == (
        "10.0.0.1:443",
        True,
        850,
        6,
    )
    # Null without --isolation-probe; absent in reports of older runners.
    assert (parsed := parse_report(report_line(networkIsolation=None))) is not None
    assert parsed.network_isolation is None
    older = report_data()
    del older["networkIsolation"]
    assert (parsed := parse_report(REPORT_PREFIX + json.dumps(older).encode())) is not None
    assert parsed.network_isolation is None
    # Strict like the rest: a malformed record makes the whole report untrusted.
    assert (
        parse_report(report_line(networkIsolation={"probe": "x", "isolated": "no", "waitedMs": 1, "attempts": 1}))
        is None
    )


def test_text_logs_work_too() -> None:
    report = parse_report("out\n" + report_line(exitCode=3).decode() + "\n")
    assert report is not None
    assert report.exit_code == 3


def test_forged_earlier_report_is_ignored() -> None:
    forged = report_line(exitCode=0, result="forged")
    log = forged + b"\n" + b"more output\n" + report_line(exitCode=1, result="real") + b"\n"
    report = parse_report(log)
    assert report is not None
    assert (report.exit_code, report.result) == (1, "real")


def test_report_followed_by_output_is_not_a_report() -> None:
    assert parse_report(report_line() + b"\nprinted after the report\n") is None
    assert parse_report(report_line() + b"\ntrailing text without newline") is None


def test_trailing_blank_lines_are_fine() -> None:
    assert parse_report(report_line() + b"\n\n  \n\t\n") is not None
    assert parse_report(report_line()) is not None


def test_no_report() -> None:
    assert parse_report(b"") is None
    assert parse_report(b"just output\n") is None
    assert parse_report(b"codeexec-report/v2 {}\n") is None


def test_invalid_utf8_is_tolerated() -> None:
    data = report_data()
    line = REPORT_PREFIX + json.dumps(data).encode().replace(b"hello", b"hel\xff\xfelo")
    report = parse_report(b"\xc3\x28 broken \xff output\n" + line + b"\n")
    assert report is not None
    assert report.stdout.text == "hel\ufffd\ufffdlo\n"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"{}",
        b"[]",
        b"null",
        json.dumps(report_data(exitCode="0")).encode(),
        json.dumps(report_data(exitCode=True)).encode(),
        json.dumps(report_data(timedOut=1)).encode(),
        json.dumps({k: v for k, v in report_data().items() if k != "stdout"}).encode(),
        json.dumps(report_data(stdout={"text": "x", "bytes": -1, "truncated": False})).encode(),
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_malformed_reports_are_rejected(payload: bytes) -> None:
    assert parse_report(REPORT_PREFIX + payload + b"\n") is None


def test_every_chunking_gives_the_same_answer() -> None:
    log = b"a\nb" + report_line(result="fake") + b"\n\n" + report_line(exitCode=2) + b"\n"
    for size in range(1, 40):
        scanner = ReportScanner()
        for start in range(0, len(log), size):
            scanner.feed(log[start : start + size])
        report = scanner.report()
        assert report is not None, size
        assert report.exit_code == 2, size


def test_report_line_over_the_cap_is_ignored() -> None:
    line = report_line(stdout={"text": "x" * 200, "bytes": 200, "truncated": False})
    scanner = ReportScanner(max_line_bytes=len(line) - 1)
    scanner.feed(line + b"\n")
    assert scanner.report() is None
    scanner = ReportScanner(max_line_bytes=len(line))
    scanner.feed(line + b"\n")
    assert scanner.report() is not None


def test_huge_output_lines_keep_memory_bounded() -> None:
    chunk = b"x" * 65536
    tracemalloc.start()
    try:
        scanner = ReportScanner(max_line_bytes=1024 * 1024)
        for _ in range(16 * 1024 * 1024 // len(chunk)):  # one 16 MiB line
            scanner.feed(chunk)
        scanner.feed(b"\n" + report_line() + b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scanner.report() is not None
    assert peak < 4 * 1024 * 1024
