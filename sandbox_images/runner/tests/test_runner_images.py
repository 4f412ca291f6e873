"""The sandbox Dockerfiles build the runner the way the tests do, and run it as the entrypoint."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from codeexec_runner.contract import RUNNER_PATH

SANDBOX_IMAGES = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(SANDBOX_IMAGES.glob("*/Dockerfile"))
BUILD_DIR = "/tmp/codeexec-runner"


def instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments left out."""
    joined = dockerfile.read_text().replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_every_runtime_has_a_dockerfile() -> None:
    assert [path.parent.name for path in DOCKERFILES] == ["javascript", "python", "typescript"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_runner_is_the_zipapp_of_the_package(dockerfile: Path, image_zipapp_command: list[str]) -> None:
    lines = instructions(dockerfile)
    copy = lines.index(f"COPY runner/codeexec_runner {BUILD_DIR}/codeexec_runner")
    run = lines[copy + 1]
    assert run.startswith("RUN ")
    steps = [shlex.split(step) for step in run.removeprefix("RUN ").split("&&")]
    assert steps == [
        ["mkdir", "-p", str(Path(RUNNER_PATH).parent)],
        image_zipapp_command,
        # zipapp makes the file executable for its owner only; the sandbox runs as uid 65534.
        ["chmod", "0755", RUNNER_PATH],
        ["rm", "-rf", BUILD_DIR],
    ]
    assert lines[-1] == f'ENTRYPOINT ["{RUNNER_PATH}"]'
    assert "USER 65534:65534" in lines
    assert sum("runner" in line for line in lines if line.startswith(("COPY", "ADD"))) == 1


def test_context_keeps_bytecode_caches_out_of_the_zipapp() -> None:
    assert "**/__pycache__" in (SANDBOX_IMAGES / ".dockerignore").read_text().splitlines()
