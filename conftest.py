"""Pytest policy for the whole tree: under CI (`CI=true`) a skipped test is a failed test."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import TypeVar

import pytest

# A skip hides a test that could not run (no helm, no root, no node, no cluster); in CI every
# prerequisite is provided, so a skip there means a test that protects nothing.
Report = TypeVar("Report", pytest.TestReport, pytest.CollectReport)

STRICT = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    return _fail_if_skipped(report)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    return _fail_if_skipped(report)


def _fail_if_skipped(report: Report) -> Report:
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which forbids skips: {reason}"
    return report
