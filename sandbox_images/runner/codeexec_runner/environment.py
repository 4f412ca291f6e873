"""Builds the program's environment from scratch, plus the pairs of the --env-file and the --bindings-file's values."""

from __future__ import annotations

import json

from codeexec_runner.channel import CHANNEL_FD
from codeexec_runner.contract import BindingsFileDict
from codeexec_runner.errors import RunnerError

PATH = "/usr/local/bin:/usr/bin:/bin"


def build_env(input_path: str | None, env_file: str | None, bindings_file: str | None) -> dict[str, str]:
    """The program's environment, from scratch: nothing of the runner's (kubelet-injected) env leaks."""
    env = {
        "PATH": PATH,
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "CODEEXEC_CHANNEL_FD": str(CHANNEL_FD),
    }
    if input_path is not None:
        env["CODEEXEC_INPUT_FILE"] = input_path
    if env_file is not None:
        env.update(read_env_file(env_file))
    if bindings_file is not None:
        # Last: spec.env (the env file) cannot redirect the code's broker calls or replace its token.
        env.update(read_bindings_file(bindings_file))
    return env


def read_env_file(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            pairs = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise RunnerError(f"cannot read env file {path}: {e}") from e
    if not isinstance(pairs, dict):
        raise RunnerError(f"env file {path} must hold a JSON object")
    for name, value in pairs.items():
        if not is_variable(name, value):
            raise RunnerError(f"env file {path}: invalid variable {name!r}")
    return pairs


def read_bindings_file(path: str) -> dict[str, str]:
    """The program's variables from the bindings file, which must be exactly a BindingsFileDict; nothing else of the
    file is kept."""
    try:
        with open(path, "rb") as f:
            value = json.loads(f.read())
    except (OSError, ValueError) as e:
        raise RunnerError(f"cannot read bindings file {path}: {e}") from e
    keys = BindingsFileDict.__required_keys__
    if not isinstance(value, dict) or set(value) != keys:
        raise RunnerError(
            f"bindings file {path} must hold a JSON object with exactly the keys {', '.join(sorted(keys))}"
        )
    bindings = value["bindings"]
    if not isinstance(bindings, dict) or not all(
        is_text(text) for text in (value["url"], value["token"], value["execution"], *bindings, *bindings.values())
    ):
        raise RunnerError(
            f"bindings file {path}: url, token, execution and every binding's name and type must be non-empty strings"
        )
    return {
        "CODEEXEC_BROKER_URL": value["url"],
        "CODEEXEC_BINDING_TOKEN": value["token"],
        "CODEEXEC_EXECUTION": value["execution"],
        "CODEEXEC_BINDINGS": json.dumps(bindings, separators=(",", ":")),
    }


def is_text(value: object) -> bool:
    """Whether `value` is a non-empty string an environment can carry."""
    return isinstance(value, str) and bool(value) and "\0" not in value and is_utf8(value)


def is_variable(name: object, value: object) -> bool:
    """Whether NAME=value can be put in an environment."""
    if not isinstance(name, str) or not isinstance(value, str):
        return False
    return bool(name) and "=" not in name and "\0" not in name + value and is_utf8(name + value)


def is_utf8(text: str) -> bool:
    # JSON escapes can produce lone surrogates, which no environment can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
