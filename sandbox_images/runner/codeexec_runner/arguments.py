"""Parses the runner's command line (the flags of `contract`) into a Config, or a RunnerError."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from typing import NoReturn

from codeexec_runner import contract
from codeexec_runner.errors import RunnerError


class _ArgumentParser(argparse.ArgumentParser):
    # argparse would print usage and exit 2 without a report; the operator needs the report.
    def error(self, message: str) -> NoReturn:
        raise RunnerError(f"invalid runner arguments: {message}")


@dataclass
class Config:
    timeout_seconds: float | None  # None with --warm: the request carries it
    max_output_bytes: int
    stdin_path: str | None
    input_path: str | None
    env_file: str | None
    bindings_file: str | None
    command: list[str]
    isolation_probe: tuple[str, int] | None
    isolation_wait_seconds: float
    warm: bool = False
    warm_dir: str = contract.WARM_DIR


def parse_args(argv: list[str]) -> Config:
    parser = _ArgumentParser(prog="runner", description="Run a sandboxed program and report its outcome.")
    parser.add_argument(contract.TIMEOUT_SECONDS_FLAG, dest="timeout_seconds", type=float)
    parser.add_argument(contract.MAX_OUTPUT_BYTES_FLAG, dest="max_output_bytes", type=int, required=True)
    parser.add_argument(contract.STDIN_FLAG, dest="stdin_path")
    parser.add_argument(contract.INPUT_FLAG, dest="input_path")
    parser.add_argument(contract.ENV_FILE_FLAG, dest="env_file")
    parser.add_argument(contract.BINDINGS_FILE_FLAG, dest="bindings_file")
    parser.add_argument(contract.ISOLATION_PROBE_FLAG, dest="isolation_probe", metavar="HOST:PORT")
    parser.add_argument(
        contract.ISOLATION_WAIT_SECONDS_FLAG,
        dest="isolation_wait_seconds",
        type=float,
        default=contract.ISOLATION_WAIT_SECONDS,
    )
    parser.add_argument(contract.WARM_FLAG, dest="warm", action="store_true")
    parser.add_argument(contract.WARM_DIR_FLAG, dest="warm_dir", default=contract.WARM_DIR)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise RunnerError("invalid runner arguments: no command after --")
    check_mode(args)
    if args.timeout_seconds is not None and args.timeout_seconds <= 0:
        raise RunnerError(f"invalid runner arguments: {contract.TIMEOUT_SECONDS_FLAG} must be positive")
    if args.max_output_bytes < 0:
        raise RunnerError(f"invalid runner arguments: {contract.MAX_OUTPUT_BYTES_FLAG} must not be negative")
    if args.isolation_wait_seconds < 0:
        raise RunnerError(f"invalid runner arguments: {contract.ISOLATION_WAIT_SECONDS_FLAG} must not be negative")
    probe = parse_probe(args.isolation_probe) if args.isolation_probe is not None else None
    return Config(
        args.timeout_seconds,
        args.max_output_bytes,
        args.stdin_path,
        args.input_path,
        args.env_file,
        args.bindings_file,
        command,
        probe,
        args.isolation_wait_seconds,
        args.warm,
        args.warm_dir,
    )


def check_mode(args: argparse.Namespace) -> None:
    """Cold mode needs the timeout; warm mode takes the timeout and the files from its request, never from flags,
    and has no bindings."""
    if not args.warm:
        if args.timeout_seconds is None:
            # argparse's own wording, as when the flag was `required`.
            raise RunnerError(
                f"invalid runner arguments: the following arguments are required: {contract.TIMEOUT_SECONDS_FLAG}"
            )
        return
    given = [
        flag
        for flag, value in (
            (contract.TIMEOUT_SECONDS_FLAG, args.timeout_seconds),
            (contract.STDIN_FLAG, args.stdin_path),
            (contract.INPUT_FLAG, args.input_path),
            (contract.ENV_FILE_FLAG, args.env_file),
            # Executions with bindings always go cold: a pool pod's policy has no egress to the broker.
            (contract.BINDINGS_FILE_FLAG, args.bindings_file),
        )
        if value is not None
    ]
    if given:
        raise RunnerError(f"invalid runner arguments: {', '.join(given)} cannot be used with {contract.WARM_FLAG}")


def parse_probe(text: str) -> tuple[str, int]:
    """Parses "10.0.0.1:443" or "[fd00::1]:443" into (address, port): an IP address, never a name (no DNS)."""
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
        number = int(port)
    except ValueError:
        address, number = None, 0
    if address is None or not 0 < number < 65536 or (address.version == 6) != bracketed:
        raise RunnerError(
            f"invalid runner arguments: {contract.ISOLATION_PROBE_FLAG} {text!r} is not IPV4:PORT or [IPV6]:PORT"
        )
    return str(address), number
