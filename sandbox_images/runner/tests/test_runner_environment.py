"""In-process tests of the program's environment (codeexec_runner.environment)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codeexec_runner.environment import build_env
from codeexec_runner.errors import RunnerError

BASE = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "CODEEXEC_CHANNEL_FD": "3",
}


def test_built_from_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert build_env(None, None) == BASE


def test_input_file_and_env_file_on_top(tmp_path: Path) -> None:
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"GREETING": "h\u00e9llo", "HOME": "/elsewhere"}))
    env = build_env("/code/input.json", str(env_file))
    assert env == {**BASE, "CODEEXEC_INPUT_FILE": "/code/input.json", "GREETING": "h\u00e9llo", "HOME": "/elsewhere"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read env file"),
        ("[]", "must hold a JSON object"),
        ('{"N": 1}', "invalid variable 'N'"),
        ('{"": "x"}', "invalid variable ''"),
        ('{"A=B": "x"}', "invalid variable 'A=B'"),
        ('{"N": "a\\u0000b"}', "invalid variable 'N'"),
        ('{"N": "\\ud800"}', "invalid variable 'N'"),
    ],
)
def test_invalid_env_file_is_a_runner_error(tmp_path: Path, content: str, message: str) -> None:
    env_file = tmp_path / "env.json"
    env_file.write_text(content)
    with pytest.raises(RunnerError, match=message) as raised:
        build_env(None, str(env_file))
    assert raised.value.exit_code == 125


def test_missing_env_file_is_a_runner_error(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="cannot read env file"):
        build_env(None, str(tmp_path / "absent.json"))
