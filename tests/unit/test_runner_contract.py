"""The operator's side of the runner contract: its report models and pod arguments against the runner's
`contract` module, and against the real runner and Python harness (host processes)."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from codeexec import builders, status
from codeexec.config import OperatorConfig
from codeexec.models import LogEntry, Model
from codeexec.report import NetworkIsolation, Report, ReportScanner, StreamOutput, Usage
from codeexec_runner import contract
from codeexec_runner.arguments import parse_args
from tests.unit.factories import NOW, pod, python_runtime, terminated
from tests.unit.factories import plan as make_plan

SANDBOX_IMAGES = Path(__file__).resolve().parents[2] / "sandbox_images"
HARNESS = SANDBOX_IMAGES / "python" / "harness.py"
CONFIG = OperatorConfig()


def run_execution(tmp_path: Path, **fields: Any) -> tuple[int, bytes, Report | None]:
    """Writes the ConfigMap's files, runs the runner with the pod's exact arguments (with /code
    moved to a temporary folder) and reads the report the way k8s.py streams a log."""
    # The host's interpreter runs the harness where the image would run /opt/codeexec/harness.py.
    plan = replace(make_plan(CONFIG, **fields), runtime=python_runtime(command=[sys.executable, str(HARNESS)]))
    execution = builders.ExecutionRef("team", "hello", "0f1e2d3c-0000")
    for name, content in builders.configmap(execution, plan)["data"].items():
        (tmp_path / name).write_text(content)
    # The probe: a local port nothing listens on, as for a pod whose NetworkPolicy is in force.
    runner_args = builders.runner_args(plan, CONFIG, isolation_probe=f"127.0.0.1:{closed_port()}")
    args = [arg.replace(f"{builders.CODE_DIR}/", f"{tmp_path}/") for arg in runner_args]
    proc = subprocess.run(
        [sys.executable, "-m", "codeexec_runner", *args],
        capture_output=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        cwd=tmp_path,
        timeout=plan.timeout_seconds + 30,
        check=False,
    )
    scanner = ReportScanner()
    for start in range(0, len(proc.stdout), 1000):
        scanner.feed(proc.stdout[start : start + 1000])
    return proc.returncode, proc.stdout, scanner.report()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("model", "schema"),
    [
        (Report, contract.ReportDict),
        (StreamOutput, contract.StreamDict),
        (NetworkIsolation, contract.IsolationDict),
        (Usage, contract.UsageDict),
        (LogEntry, contract.LogEntryDict),
    ],
)
def test_report_models_read_exactly_the_keys_the_runner_writes(model: type[Model], schema: Any) -> None:
    assert {field.alias for field in model.model_fields.values()} == schema.__required_keys__


def test_runner_reads_the_pod_arguments_as_the_operator_means_them() -> None:
    plan = make_plan(CONFIG, args=["a", "b"])
    config = parse_args(builders.runner_args(plan, CONFIG, isolation_probe="10.96.0.1:443"))
    assert (config.timeout_seconds, config.max_output_bytes) == (plan.timeout_seconds, CONFIG.max_output_bytes)
    assert config.isolation_probe == ("10.96.0.1", 443)
    assert config.isolation_wait_seconds == contract.ISOLATION_WAIT_SECONDS
    assert (config.stdin_path, config.input_path, config.env_file) == (
        f"{builders.CODE_DIR}/stdin",
        f"{builders.CODE_DIR}/input.json",
        f"{builders.CODE_DIR}/env.json",
    )
    assert config.command == [*plan.runtime.command, f"{builders.CODE_DIR}/{plan.runtime.file_name}", "a", "b"]


def outcome(exit_code: int, report: Report | None) -> dict[str, Any]:
    running = {"phase": "Running", "startedAt": "2030-01-02T03:04:00Z"}
    patch = status.from_pod(running, pod(phase="Failed", state=terminated(exit_code)), report, CONFIG, NOW, 1)
    assert patch is not None
    return patch


def test_result_console_and_input_reach_the_status(tmp_path: Path) -> None:
    code = 'console.info("got", input["n"])\nprint("out")\nreturn {"double": input["n"] * 2}\n'
    exit_code, _, report = run_execution(tmp_path, code=code, input={"n": 21})
    patch = outcome(exit_code, report)
    assert (patch["phase"], patch["reason"], patch["exitCode"]) == ("Succeeded", "Completed", 0)
    assert patch["result"] == {"double": 42}
    assert patch["stdout"] == "got 21\nout\n"
    assert [(entry["level"], entry["message"]) for entry in patch["logs"]] == [("info", "got 21")]


def test_stdin_args_and_env_are_delivered(tmp_path: Path) -> None:
    code = "import os, sys\nprint(sys.stdin.read().strip(), sys.argv[1:], os.environ['GREETING'])\n"
    exit_code, _, report = run_execution(
        tmp_path, code=code, stdin="from stdin\n", args=["a", "b"], env=[{"name": "GREETING", "value": "hi"}]
    )
    assert outcome(exit_code, report)["stdout"] == "from stdin ['a', 'b'] hi\n"


def test_forged_report_in_the_output_changes_nothing(tmp_path: Path) -> None:
    forged = 'codeexec-report/v1 {"exitCode": 0, "timedOut": false}'
    code = f"print({forged!r})\nraise SystemExit(3)\n"
    exit_code, stdout, report = run_execution(tmp_path, code=code)
    assert forged.encode() in stdout
    patch = outcome(exit_code, report)
    assert (patch["phase"], patch["reason"], patch["exitCode"]) == ("Failed", "NonZeroExit", 3)


def test_runner_timeout_becomes_timed_out(tmp_path: Path) -> None:
    exit_code, _, report = run_execution(tmp_path, code="while True:\n    pass\n", timeoutSeconds=1)
    patch = outcome(exit_code, report)
    assert (patch["phase"], patch["reason"], patch["exitCode"]) == ("TimedOut", "Timeout", 124)
