"""The tree-wide pytest policy: under CI=true a skipped test fails the run; elsewhere it stays a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parents[2] / "conftest.py"
SKIPPING_TESTS = """
import pytest

def test_runs():
    pass

def test_skips_itself():
    pytest.skip("no helm here")

@pytest.mark.skipif(True, reason="no root here")
def test_skipped_by_marker():
    pass
"""


def run_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT_CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_skipping.py").write_text(SKIPPING_TESTS)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_skip_fails_under_ci(tmp_path: Path, ci: str) -> None:
    result = run_pytest(tmp_path, ci)
    assert result.returncode == 1, result.stdout
    assert "FAILED test_skipping.py::test_skips_itself - skipped under CI=true" in result.stdout
    assert "test_skipping.py::test_skipped_by_marker - skipped under CI=true" in result.stdout
    assert "1 passed" in result.stdout
    assert " skipped" not in result.stdout.splitlines()[-1]


def test_a_skip_stays_a_skip_outside_ci(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 skipped" in result.stdout
