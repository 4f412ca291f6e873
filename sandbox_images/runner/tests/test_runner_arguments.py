"""In-process tests of the runner's argument parsing (codeexec_runner.arguments)."""

from __future__ import annotations

import pytest

from codeexec_runner import contract
from codeexec_runner.arguments import parse_args, parse_probe
from codeexec_runner.errors import RunnerError

REQUIRED = ["--timeout-seconds", "2.5", "--max-output-bytes", "100"]


def test_every_flag_is_read() -> None:
    config = parse_args(
        [
            *REQUIRED,
            *("--stdin", "/code/stdin", "--input", "/code/input.json", "--env-file", "/code/env.json"),
            *("--bindings-file", "/code/bindings.json"),
            *("--isolation-probe", "10.96.0.1:443", "--isolation-wait-seconds", "3"),
            *("--", "python3", "/code/main.py", "--not-a-runner-flag"),
        ]
    )
    assert (config.timeout_seconds, config.max_output_bytes) == (2.5, 100)
    assert (config.stdin_path, config.input_path, config.env_file) == (
        "/code/stdin",
        "/code/input.json",
        "/code/env.json",
    )
    assert config.bindings_file == "/code/bindings.json"
    assert config.isolation_probe == ("10.96.0.1", 443) and config.isolation_wait_seconds == 3
    assert config.command == ["python3", "/code/main.py", "--not-a-runner-flag"]


def test_optional_flags_default_to_none_and_the_contract_wait() -> None:
    config = parse_args([*REQUIRED, "--", "true"])
    assert (config.stdin_path, config.input_path, config.env_file, config.bindings_file, config.isolation_probe) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert config.isolation_wait_seconds == contract.ISOLATION_WAIT_SECONDS
    assert parse_args([*REQUIRED, "true"]).command == ["true"]  # "--" is optional


def test_warm_mode_takes_no_timeout_and_defaults_to_the_contract_directory() -> None:
    config = parse_args(["--warm", "--max-output-bytes", "100", "--", "node", "/opt/codeexec/harness.mjs"])
    assert config.warm is True and config.timeout_seconds is None and config.warm_dir == contract.WARM_DIR
    assert config.command == ["node", "/opt/codeexec/harness.mjs"]
    assert parse_args([*REQUIRED, "--", "true"]).warm is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-output-bytes", "1", "--", "true"], "required: --timeout-seconds"),
        (["--warm", *REQUIRED, "--", "true"], "--timeout-seconds cannot be used with --warm"),
        (
            ["--warm", "--max-output-bytes", "1", "--stdin", "/s", "--input", "/i", "--", "true"],
            "--stdin, --input cannot",
        ),
        (["--warm", "--max-output-bytes", "1", "--env-file", "/e", "--", "true"], "--env-file cannot be used"),
        (["--warm", "--max-output-bytes", "1", "--bindings-file", "/b", "--", "true"], "--bindings-file cannot be"),
        (["--timeout-seconds", "soon", "--max-output-bytes", "1", "--", "true"], "invalid float value"),
        ([*REQUIRED, "--"], "no command after --"),
        (["--timeout-seconds", "0", "--max-output-bytes", "1", "--", "true"], "--timeout-seconds must be positive"),
        (["--timeout-seconds", "1", "--max-output-bytes", "-1", "--", "true"], "must not be negative"),
        ([*REQUIRED, "--isolation-wait-seconds", "-1", "--", "true"], "--isolation-wait-seconds must not"),
        ([*REQUIRED, "--unknown", "--", "true"], "unrecognized arguments"),
    ],
)
def test_invalid_arguments_are_runner_errors_not_exits(argv: list[str], message: str) -> None:
    with pytest.raises(RunnerError, match=r"^invalid runner arguments: ") as raised:
        parse_args(argv)
    assert message in str(raised.value)
    assert raised.value.exit_code == contract.EXIT_RUNNER_ERROR


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("10.0.0.1:443", ("10.0.0.1", 443)), ("[fd00::1]:6443", ("fd00::1", 6443)), ("[::1]:1", ("::1", 1))],
)
def test_probe_is_an_address_and_a_port(text: str, parsed: tuple[str, int]) -> None:
    assert parse_probe(text) == parsed


@pytest.mark.parametrize(
    "text", ["kubernetes.default:443", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:65536", "::1:443", "[10.0.0.1]:443", ":443"]
)
def test_probe_names_and_bad_ports_are_refused(text: str) -> None:
    with pytest.raises(RunnerError, match="--isolation-probe"):
        parse_probe(text)
