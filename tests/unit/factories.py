"""Builders of test inputs: Runtimes, specs, plans, pod dicts and runner reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from codeexec.config import OperatorConfig
from codeexec.models import RuntimeSpec
from codeexec.report import Report
from codeexec.validation import Plan, plan_execution
from codeexec_runner.contract import REPORT_PREFIX

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def python_runtime(**fields: Any) -> RuntimeSpec:
    return RuntimeSpec.model_validate(
        {
            "image": "localhost/codeexec/python:0.1.0",
            "command": ["python3", "/opt/codeexec/harness.py"],
            "fileName": "main.py",
            "aliases": ["py", "python3"],
            **fields,
        }
    )


PYTHON = python_runtime()
JAVASCRIPT = RuntimeSpec.model_validate(
    {
        "image": "localhost/codeexec/javascript:0.1.0",
        "command": ["node", "/opt/codeexec/harness.mjs"],
        "fileName": "main.js",
        "aliases": ["js"],
    }
)
RUNTIMES = {"python": PYTHON, "javascript": JAVASCRIPT}
# Pod settings an Execution's author must never choose: the schema has no place for them
# and the operator rejects them.
POD_LEVEL_FIELDS = [
    "image",
    "privileged",
    "hostPath",
    "runtimeClass",
    "runtimeClassName",
    "nodeName",
    "serviceAccount",
    "serviceAccountName",
    "securityContext",
]


def spec(**fields: Any) -> dict[str, Any]:
    return {"language": "python", "code": "print('hi')", **fields}


def plan(config: OperatorConfig | None = None, granted: dict[str, str] | None = None, **fields: Any) -> Plan:
    """The plan of a spec with `fields`; `granted`: the namespace's SandboxBindings (None: bindings unchecked)."""
    result = plan_execution(spec(**fields), RUNTIMES, config or OperatorConfig(), True, granted)
    assert isinstance(result, Plan), result
    return result


def timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    *,
    phase: str = "Running",
    state: dict[str, Any] | None = None,
    reason: str | None = None,
    message: str | None = None,
    created: datetime = NOW - timedelta(seconds=5),
    deleting: bool = False,
    conditions: list[dict[str, Any]] | None = None,
    memory_limit: str = "256Mi",
) -> dict[str, Any]:
    """A sandbox pod as the API returns it; `state` is the sandbox container's state."""
    status: dict[str, Any] = {"phase": phase, "conditions": conditions or []}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if state is not None:
        status["containerStatuses"] = [{"name": "sandbox", "state": state}]
    metadata: dict[str, Any] = {"name": "hello-0f1e2d3c", "namespace": "team", "creationTimestamp": timestamp(created)}
    if deleting:
        metadata["deletionTimestamp"] = timestamp(NOW)
    return {
        "metadata": metadata,
        "spec": {"containers": [{"name": "sandbox", "resources": {"limits": {"memory": memory_limit}}}]},
        "status": status,
    }


def terminated(exit_code: int, reason: str = "Completed", seconds: int = 2) -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": timestamp(NOW - timedelta(seconds=seconds)),
            "finishedAt": timestamp(NOW),
        }
    }


def report_data(**fields: Any) -> dict[str, Any]:
    """A report as the runner writes it (sandbox_images/README.md)."""
    return {
        "exitCode": 0,
        "timedOut": False,
        "signal": None,
        "durationMs": 1234,
        "stdout": {"text": "hello\n", "bytes": 6, "truncated": False},
        "stderr": {"text": "", "bytes": 0, "truncated": False},
        "hasResult": True,
        "result": {"sum": 6},
        "logs": [{"level": "info", "time": "2030-01-02T03:04:04.123Z", "message": "summing"}],
        "logsTruncated": False,
        "error": None,
        "networkIsolation": {"probe": "10.0.0.1:443", "isolated": True, "waitedMs": 850, "attempts": 6},
        "usage": {"cpuMs": 420, "peakMemoryBytes": 12 * 1024 * 1024},
        **fields,
    }


def report(**fields: Any) -> Report:
    return Report.model_validate(report_data(**fields))


def report_line(**fields: Any) -> bytes:
    return REPORT_PREFIX + json.dumps(report_data(**fields)).encode()
