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
    assert build_env(None, None, None) == BASE


def test_input_file_and_env_file_on_top(tmp_path: Path) -> None:
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"GREETING": "h\u00e9llo", "HOME": "/elsewhere"}))
    env = build_env("/code/input.json", str(env_file), None)
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
        build_env(None, str(env_file), None)
    assert raised.value.exit_code == 125


def test_missing_env_file_is_a_runner_error(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="cannot read env file"):
        build_env(None, str(tmp_path / "absent.json"), None)


BINDINGS_FILE = {
    "url": "http://10.96.0.57:8080",
    "token": "t" * 43,
    "execution": "team-a/ex-a",
    "bindings": {"notes": "db", "other": "db"},
}
BINDINGS_ENV = {
    "CODEEXEC_BROKER_URL": "http://10.96.0.57:8080",
    "CODEEXEC_BINDING_TOKEN": "t" * 43,
    "CODEEXEC_EXECUTION": "team-a/ex-a",
    "CODEEXEC_BINDINGS": '{"notes":"db","other":"db"}',
}


def test_bindings_file_gives_exactly_four_variables_over_the_env_file(tmp_path: Path) -> None:
    bindings_file = tmp_path / "bindings.json"
    bindings_file.write_text(json.dumps(BINDINGS_FILE))
    env_file = tmp_path / "env.json"
    env_file.write_text(json.dumps({"CODEEXEC_BROKER_URL": "http://attacker:1", "CODEEXEC_BINDING_TOKEN": "x"}))
    assert build_env(None, str(env_file), str(bindings_file)) == {**BASE, **BINDINGS_ENV}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read bindings file"),
        ("[]", "exactly the keys bindings, execution, token, url"),
        (json.dumps({k: v for k, v in BINDINGS_FILE.items() if k != "token"}), "exactly the keys"),
        (json.dumps({**BINDINGS_FILE, "dsn": "postgres://secret"}), "exactly the keys"),
        (json.dumps({**BINDINGS_FILE, "token": 1}), "must be non-empty strings"),
        (json.dumps({**BINDINGS_FILE, "url": ""}), "must be non-empty strings"),
        (json.dumps({**BINDINGS_FILE, "execution": "a\u0000b"}), "must be non-empty strings"),
        (json.dumps({**BINDINGS_FILE, "token": "\ud800"}), "must be non-empty strings"),
        (json.dumps({**BINDINGS_FILE, "bindings": ["notes"]}), "must be non-empty strings"),
        (json.dumps({**BINDINGS_FILE, "bindings": {"notes": {"type": "db"}}}), "must be non-empty strings"),
        (json.dumps({**BINDINGS_FILE, "bindings": {"": "db"}}), "must be non-empty strings"),
    ],
)
def test_invalid_bindings_file_is_a_runner_error(tmp_path: Path, content: str, message: str) -> None:
    bindings_file = tmp_path / "bindings.json"
    bindings_file.write_text(content)
    with pytest.raises(RunnerError, match=message) as raised:
        build_env(None, None, str(bindings_file))
    assert raised.value.exit_code == 125


def test_missing_bindings_file_is_a_runner_error(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="cannot read bindings file"):
        build_env(None, None, str(tmp_path / "absent.json"))
