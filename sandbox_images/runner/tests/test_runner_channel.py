"""In-process tests of the harness channel parser (codeexec_runner.channel)."""

from __future__ import annotations

import json
from typing import Any

from codeexec_runner.channel import MAX_RESULT_DEPTH, Channel, json_depth
from codeexec_runner.contract import MAX_LOG_BYTES, MAX_LOG_ENTRIES

WHEN = "2030-01-02T03:04:05.678Z"


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def log(message: str, level: str = "info") -> bytes:
    return line({"type": "log", "level": level, "time": WHEN, "message": message})


def test_logs_and_result_arrive_in_any_chunking() -> None:
    data = log("one") + line({"type": "result", "value": {"n": [1, 2]}}) + log("two", "warn")
    channel = Channel(1000)
    for i in range(len(data)):
        channel.feed(data[i : i + 1])
    channel.finish()
    assert channel.has_result and channel.result == {"n": [1, 2]}
    assert channel.logs == [
        {"level": "info", "time": WHEN, "message": "one"},
        {"level": "warn", "time": WHEN, "message": "two"},
    ]
    assert channel.error is None and not channel.logs_truncated


def test_last_line_without_newline_counts_at_finish() -> None:
    channel = Channel(1000)
    channel.feed(line({"type": "result", "value": None})[:-1])
    assert not channel.has_result
    channel.finish()
    assert channel.has_result and channel.result is None


def test_first_error_is_kept_and_the_rest_still_parsed() -> None:
    channel = Channel(1000)
    channel.feed(b"garbage\n" + line({"type": "nope"}) + log("bad level", "trace") + log("fine") + b"\n  \n")
    assert channel.error == "malformed channel line: not JSON"
    assert [entry["message"] for entry in channel.logs] == ["fine"]


def test_harness_error_message_becomes_the_error() -> None:
    channel = Channel(1000)
    channel.feed(line({"type": "error", "message": "result is not JSON serialisable"}))
    assert channel.error == "result is not JSON serialisable"


def test_log_time_must_be_rfc3339_utc_with_ms() -> None:
    channel = Channel(1000)
    channel.feed(line({"type": "log", "level": "log", "time": "2030-01-02T03:04:05Z", "message": "x"}))
    assert channel.error == "malformed channel line: bad log entry" and channel.logs == []


def test_second_result_is_an_error_and_the_first_stands() -> None:
    channel = Channel(1000)
    channel.feed(line({"type": "result", "value": 1}) + line({"type": "result", "value": 2}))
    assert channel.result == 1 and channel.error is not None and "more than one result" in channel.error


def test_result_above_the_limit_or_too_deep_is_refused() -> None:
    big = Channel(10)
    big.feed(line({"type": "result", "value": "x" * 20}))
    assert not big.has_result and big.error == "result is 22 bytes of JSON, above the limit of 10"
    deep = Channel(100_000)
    value: Any = []
    for _ in range(MAX_RESULT_DEPTH):
        value = [value]
    deep.feed(line({"type": "result", "value": value}))
    assert not deep.has_result and deep.error == f"result is nested deeper than {MAX_RESULT_DEPTH} levels"


def test_json_depth_counts_levels_without_recursion() -> None:
    assert [json_depth(v) for v in (1, [], {"a": [1]}, [[[]]])] == [1, 1, 3, 3]
    assert json_depth([[]] * 3) == 2
    nested: Any = 0
    for _ in range(100_000):
        nested = [nested]
    assert json_depth(nested) == 100_001


def test_logs_capped_by_count() -> None:
    channel = Channel(1000)
    channel.feed(b"".join(log(str(i)) for i in range(MAX_LOG_ENTRIES + 5)))
    assert len(channel.logs) == MAX_LOG_ENTRIES and channel.logs_truncated and channel.error is None


def test_logs_capped_by_bytes_cutting_the_last_message_at_a_character() -> None:
    channel = Channel(10)
    channel.feed(log("a" * (MAX_LOG_BYTES - 2)) + log("\u20ac\u20ac") + log("dropped"))
    assert [len(entry["message"].encode()) for entry in channel.logs] == [MAX_LOG_BYTES - 2, 0]
    assert channel.logs_truncated


def test_overlong_line_is_discarded_in_bounded_memory_and_the_next_line_counts() -> None:
    channel = Channel(10)
    for _ in range(100):
        channel.feed(b"x" * 10_000)
    assert len(channel.pending) <= channel.line_limit
    channel.feed(b"\n" + log("after"))
    assert channel.error == f"channel line longer than {channel.line_limit} bytes"
    assert [entry["message"] for entry in channel.logs] == ["after"]
