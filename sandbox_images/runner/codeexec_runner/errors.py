"""The runner's own failure before the program could start, with the exit code it reports."""

from __future__ import annotations

from codeexec_runner.contract import EXIT_RUNNER_ERROR


class RunnerError(Exception):
    """A failure before the program could start; carries the exit code to report."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNNER_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code
