"""Unit tests of the SDK's pure parts: request → Execution, Execution → result, pages, errors, the CLI's exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from codeexec import cli
from codeexec.cli import EXIT_NO_EXIT_CODE, EXIT_TIMED_OUT, exit_code
from codeexec.client import errors, syntax
from codeexec.client.shapes import (
    ExecuteRequest,
    ExecutionResult,
    InvalidFields,
    decode_continue,
    execution_result,
    language,
    page,
    spec_path_to_request,
)
from codeexec.client.transports import KubeTransport, _problem_error, raise_if_rejected
from codeexec_runner.contract import REPORT_PREFIX


def execution(name: str, created: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
        "spec": {"language": "python", "code": "pass"},
        "status": status,
    }


def test_request_becomes_the_execution_spec_with_its_fields_renamed() -> None:
    """Seen failing with env sent as a map (the spec wants a list) and allowedDomains outside spec.network."""
    request = ExecuteRequest.model_validate(
        {
            "code": "print(1)",
            "language": "py",
            "input": {"a": [1]},
            "env": {"A": "1"},
            "timeoutSeconds": 5,
            "allowedDomains": ["example.com"],
            "labels": {"team": "x"},
        }
    )
    manifest = request.manifest()
    assert manifest["apiVersion"] == "codeexec.io/v1alpha1"
    assert manifest["metadata"] == {"generateName": "ex-", "labels": {"team": "x"}}
    assert manifest["spec"] == {
        "language": "py",
        "code": "print(1)",
        "input": {"a": [1]},
        "env": [{"name": "A", "value": "1"}],
        "timeoutSeconds": 5,
        "network": {"allowedDomains": ["example.com"]},
    }
    named = ExecuteRequest(code="x", language="py", name="mine").manifest()
    assert named["metadata"] == {"name": "mine"}


def test_invalid_fields_are_named_by_the_request_s_own_paths() -> None:
    """The spec's rules (the CRD's source) apply; paths are the request's: env by name, allowedDomains at the top."""
    request = ExecuteRequest.model_validate(
        {
            "code": "x",
            "language": "py",
            "timeoutSeconds": 0,
            "env": {"OK": "1", "CODEEXEC_X": "1"},
            "allowedDomains": ["not a domain"],
        }
    )
    with pytest.raises(InvalidFields) as raised:
        request.manifest()
    fields = {error.field for error in raised.value.errors}
    assert fields == {"timeoutSeconds", "env.CODEEXEC_X", "allowedDomains.0"}, raised.value.errors
    assert spec_path_to_request("spec.network.allowedDomains[0]") == "allowedDomains[0]"
    assert spec_path_to_request("spec.timeoutSeconds") == "timeoutSeconds"


def test_execution_in_the_api_shape() -> None:
    result = execution_result(execution("a", "2026-01-01T00:00:00Z", phase="Succeeded", exitCode=0, result=[1]))
    assert (result.id, result.namespace, result.language, result.created_at) == (
        "a",
        "ns",
        "python",
        "2026-01-01T00:00:00Z",
    )
    assert result.succeeded and result.finished and result.result == [1]
    dumped = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["exitCode"] == 0 and dumped["createdAt"] == "2026-01-01T00:00:00Z"
    # A newer server's status field does not break an older client.
    assert execution_result(execution("b", "t", phase="Pending", somethingNew=1)).phase == "Pending"


def test_pages_are_newest_first_and_continue_survives_new_executions() -> None:
    """Seen failing when the continue token was an offset: an Execution created between two pages shifted
    the second page, repeating an item."""
    items = [execution(f"e{i}", f"2026-01-01T00:00:0{i}Z") for i in range(5)]
    first, token = page(items, 2)
    assert [e["metadata"]["name"] for e in first] == ["e4", "e3"]
    assert token is not None
    newer = [*items, execution("e9", "2026-01-01T00:00:09Z")]
    second, token = page(newer, 2, continue_=token)
    assert [e["metadata"]["name"] for e in second] == ["e2", "e1"]
    last, token = page(newer, 2, continue_=token)
    assert [e["metadata"]["name"] for e in last] == ["e0"] and token is None
    by_offset, _ = page(items, 2, offset=3)
    assert [e["metadata"]["name"] for e in by_offset] == ["e1", "e0"]
    with pytest.raises(InvalidFields):
        decode_continue("not-a-token")


def test_language_from_a_runtime() -> None:
    runtime = {
        "metadata": {"name": "python"},
        "spec": {"image": "i", "command": ["python3"], "fileName": "main.py", "aliases": ["py"], "version": "3.11"},
    }
    found = language(runtime)
    assert (found.name, found.aliases, found.file_name, found.default_timeout_seconds) == (
        "python",
        ["py"],
        "main.py",
        30,
    )
    assert "image" not in found.model_dump()


def test_problem_documents_become_the_matching_exceptions() -> None:
    problem = {"detail": "still running", "reason": "WaitTimeout", "id": "ex-1"}
    error = _problem_error(504, problem)
    assert isinstance(error, errors.WaitTimeout) and error.execution_id == "ex-1"
    invalid = _problem_error(422, {"detail": "bad", "errors": [{"field": "code", "message": "required"}]})
    assert isinstance(invalid, errors.InvalidRequest) and invalid.errors[0].field == "code"
    assert isinstance(_problem_error(403, {}), errors.Forbidden)
    assert isinstance(_problem_error(401, "not json"), errors.Unauthorized)
    assert isinstance(_problem_error(502, {}), errors.Unavailable)


def test_a_rejected_execution_raises_with_its_stable_reason() -> None:
    rejected = execution_result(execution("r", "t", phase="Rejected", reason="UnknownLanguage", message="no"))
    with pytest.raises(errors.InvalidRequest) as raised:
        raise_if_rejected(rejected)
    assert (raised.value.reason, raised.value.execution_id) == ("UnknownLanguage", "r")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"phase": "Succeeded", "exitCode": 0}, 0),
        ({"phase": "Failed", "exitCode": 3}, 3),
        ({"phase": "TimedOut", "exitCode": 137}, EXIT_TIMED_OUT),
        ({"phase": "Failed", "reason": "OOMKilled"}, EXIT_NO_EXIT_CODE),
    ],
)
def test_cli_exits_with_the_program_s_exit_code(status: dict[str, Any], expected: int) -> None:
    assert exit_code(execution_result(execution("x", "t", **status))) == expected


def test_syntax_checker_runs_the_code_as_input_of_its_language_s_checker() -> None:
    """The code to check is the checker's input, never its program (seen failing, the checked code ran)."""
    request = ExecuteRequest(code="print(1", language="py")
    check = syntax.checker(request, "python")
    assert check is not None
    assert (check.language, check.input, check.code) == ("python", "print(1", syntax.PYTHON)
    assert check.timeout_seconds == syntax.CHECK_TIMEOUT_SECONDS
    assert syntax.checker(request, "cobol") is None
    found = syntax.diagnostics([{"line": 1, "column": 7, "message": "'(' was never closed"}])
    assert [(e.field, e.line, e.column) for e in found] == [("code", 1, 7)]
    assert syntax.diagnostics([]) == []
    assert syntax.diagnostics(None)[0].field == "code"


def test_python_checker_accepts_what_the_harness_runs() -> None:
    """The checker is plain Python here: top-level return and await parse, a broken line is reported."""
    body = "".join(f"    {line}\n" for line in syntax.PYTHON.strip().splitlines())
    scope: dict[str, Any] = {}
    exec(compile(f"def check(input):\n{body}", "checker", "exec"), scope)
    assert scope["check"]("await f()\nreturn 1\n") == []
    assert [item["line"] for item in scope["check"]("x = 1\ny = (\n")] == [2]


class LogApi:
    """Just what KubeTransport.output reads: a Running Execution, its pod's log, then the finished one."""

    def __init__(self, log: list[bytes]) -> None:
        self.log = log
        self.reads = 0

    async def get_execution(self, name: str) -> dict[str, Any]:
        self.reads += 1
        status = {"phase": "Running", "podName": "pod"} if self.reads == 1 else {"phase": "Succeeded", "exitCode": 0}
        return {**execution(name, "t", **status), "metadata": {"name": name, "resourceVersion": "1"}}

    async def follow_log(self, pod: str, container: str) -> AsyncIterator[bytes]:
        for line in self.log:
            yield line


def test_output_events_are_the_program_s_lines_without_the_runner_s_report() -> None:
    """Seen failing with an empty `output` event at the end: the runner writes a newline before its report."""
    log = [b"first\n", b"\n", b"third\n", b"\n", REPORT_PREFIX + b'{"exitCode": 0}\n']
    transport = KubeTransport(LogApi(log))  # type: ignore[arg-type]

    async def collect() -> list[tuple[str, str]]:
        return [event async for event in transport.output("x", 10)]

    events = asyncio.run(collect())
    assert events[:-1] == [("output", "first"), ("output", ""), ("output", "third")]
    kind, data = events[-1]
    assert kind == "result" and json.loads(data)["phase"] == "Succeeded"


class OneExecution:
    """Just what `codeexec get` asks a Client for."""

    def __init__(self, result: ExecutionResult) -> None:
        self.result = result

    def get_execution(self, execution_id: str) -> ExecutionResult:
        assert execution_id == self.result.id
        return self.result


USAGE = {"cpuMs": 420, "peakMemoryBytes": 12 * 1024 * 1024}


def test_usage_is_in_the_result_and_in_what_codeexec_get_prints(capsys: pytest.CaptureFixture[str]) -> None:
    result = execution_result(
        execution("u", "t", phase="Succeeded", reason="Completed", exitCode=0, durationMs=900, usage=USAGE)
    )
    assert result.usage is not None and (result.usage.cpu_ms, result.usage.peak_memory_bytes) == (420, 12 << 20)
    # The gateway answers with this dump: the status' usage under the same name.
    assert result.model_dump(mode="json", by_alias=True, exclude_none=True)["usage"] == USAGE

    client: Any = OneExecution(result)
    cli._get(client, argparse.Namespace(id="u", output="json"))
    assert json.loads(capsys.readouterr().out)["usage"] == USAGE

    cli._get(client, argparse.Namespace(id="u", output="text"))
    header, row = capsys.readouterr().out.splitlines()
    cells = dict(zip(re.split(r"\s{3,}", header), re.split(r"\s{3,}", row), strict=True))
    assert (cells["CPU(MS)"], cells["PEAK MEMORY"], cells["DURATION(MS)"]) == ("420", "12.0Mi", "900")

    # Not finished (or no report): the columns stay empty, and the result has no usage.
    running = execution_result(execution("u", "t", phase="Running"))
    assert running.usage is None
    cli._get(OneExecution(running), argparse.Namespace(id="u", output="text"))
    assert "Mi" not in capsys.readouterr().out
