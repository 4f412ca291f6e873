"""The runner's entry point (`python3 -m codeexec_runner`; the image's zipapp calls main()): one run, one report."""

from __future__ import annotations

import sys
from typing import NoReturn

from codeexec_runner.arguments import parse_args
from codeexec_runner.contract import EXIT_NOT_ISOLATED
from codeexec_runner.errors import RunnerError
from codeexec_runner.isolation import wait_for_isolation
from codeexec_runner.output import write_all
from codeexec_runner.process import harden
from codeexec_runner.program import run
from codeexec_runner.report import Outcome, write_report
from codeexec_runner.warm import run_warm


def execute(argv: list[str]) -> int:
    """Hardens the runner, waits for isolation, runs the program (at once, or pre-started until its request
    arrives with --warm) and always writes the report;
    returns the exit code the runner exits with."""
    isolation = None
    try:
        harden()
        config = parse_args(argv)
        if config.isolation_probe is not None:
            isolation = wait_for_isolation(config.isolation_probe, config.isolation_wait_seconds)
            if not isolation.isolated:
                raise RunnerError(
                    f"network isolation not in effect: {isolation.probe} was still reachable after "
                    f"{isolation.waited_ms / 1000:.1f} s; the program was not started",
                    EXIT_NOT_ISOLATED,
                )
        outcome = run_warm(config) if config.warm else run(config)
    except RunnerError as e:
        write_all(sys.stdout.fileno(), f"codeexec runner: {e}\n".encode())
        outcome = Outcome(exit_code=e.exit_code, error=str(e))
    outcome.isolation = isolation
    write_report(outcome)
    return outcome.exit_code


def main() -> NoReturn:
    sys.exit(execute(sys.argv[1:]))


if __name__ == "__main__":
    main()
