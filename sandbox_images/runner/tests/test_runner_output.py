"""In-process tests of output capture and its live echo (codeexec_runner.output)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from codeexec_runner.output import ECHO_LIMIT, ECHO_NOTICE, Capture


@pytest.fixture
def log(tmp_path: Path) -> Iterator[tuple[int, Callable[[], bytes]]]:
    """A file standing in for the container log: its fd, and a reader of what was written."""
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    yield fd, path.read_bytes
    os.close(fd)


def test_keeps_the_first_limit_bytes_and_counts_all(log: tuple[int, Callable[[], bytes]]) -> None:
    fd, written = log
    capture = Capture(5, fd)
    for chunk in (b"abc", b"defg", b"h"):
        capture.feed(chunk)
    assert capture.to_json() == {"text": "abcde", "bytes": 8, "truncated": True}
    assert written() == b"abcdefgh"  # the log shows more than the report keeps


def test_invalid_utf8_is_replaced_but_a_cut_character_is_dropped(log: tuple[int, Callable[[], bytes]]) -> None:
    invalid = Capture(100, log[0])
    invalid.feed(b"ok \xff end \xe2\x82")  # ends inside a character at the real end: invalid
    assert invalid.to_json() == {"text": "ok \ufffd end \ufffd", "bytes": 11, "truncated": False}
    cut = Capture(4, log[0])
    cut.feed("aaa\u20ac".encode())
    assert cut.to_json() == {"text": "aaa", "bytes": 6, "truncated": True}


def test_echo_stops_after_the_limit_with_one_notice(log: tuple[int, Callable[[], bytes]]) -> None:
    fd, written = log
    capture = Capture(0, fd)
    for _ in range(3):
        capture.feed(b"x" * (ECHO_LIMIT // 2 + 1))
    assert written() == b"x" * ECHO_LIMIT + b"\n" + ECHO_NOTICE
    assert capture.to_json() == {"text": "", "bytes": 3 * (ECHO_LIMIT // 2 + 1), "truncated": True}


def test_a_gone_log_reader_does_not_stop_the_capture() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # writes now fail with EPIPE (Python ignores SIGPIPE)
    try:
        capture = Capture(10, write_fd)
        capture.feed(b"still ")
        capture.feed(b"kept")
    finally:
        os.close(write_fd)
    assert capture.echo_fd is None
    assert capture.to_json() == {"text": "still kept", "bytes": 10, "truncated": False}
