"""e2e: ttlSecondsAfterFinished on the real cluster: a finished Execution goes when its TTL has passed, and one
deleted while its TTL still counts goes at once, even while the operator's timer call for it is in flight."""

from __future__ import annotations

import pytest

from tests.e2e.executions import StartOperator, run
from tests.e2e.kube import REPO, kubectl, wait_until

pytestmark = pytest.mark.e2e

# The operator's timer looks at a finished Execution every 5 s: its TTL is acted on within that, and a little.
TTL_SECONDS = 3
TTL_SLACK_SECONDS = 20
# Well below both the in-flight call (slow_timer.SLOW_SECONDS) and Kopf's 60 s recheck of a timer still exiting.
GONE_SECONDS = 10
SLOW_TIMER = REPO / "tests/e2e/slow_timer"
# A timer call begins within its 5 s interval after the previous one, which is slow there (SLOW_SECONDS = 20).
NEXT_CALL_SECONDS = 60


def _gone(namespace: str, name: str) -> bool:
    return not kubectl("get", "execution", name, "-n", namespace, "--ignore-not-found", "-o", "name").strip()


def test_a_finished_execution_goes_when_its_ttl_has_passed(op_namespace: str) -> None:
    finished = run(op_namespace, "ttl-short", "python", "print(1)", ttlSecondsAfterFinished=TTL_SECONDS)
    assert finished["status"]["phase"] == "Succeeded", finished["status"]
    wait_until(lambda: _gone(op_namespace, "ttl-short"), TTL_SECONDS + TTL_SLACK_SECONDS, "the TTL to delete it")


def test_an_execution_deleted_while_its_ttl_counts_goes_at_once(own_operator: StartOperator) -> None:
    """Fails without the timer filter's deletion clause (handlers._needs_watching): Kopf then keeps its finalizer
    until the timer has exited, and finding a call of it still in flight (a sync handler in a thread: there
    whenever a busy node makes it wait), checks again only 60 s later (settings.background.cancellation_polling).
    The operator here makes every timer call slow (tests/e2e/slow_timer) so the deletion always meets one."""
    operator = own_operator(PYTHONPATH=str(SLOW_TIMER))
    namespace = operator.namespaces[0]
    process = operator.process
    finished = run(namespace, "ttl-long", "python", "print(1)", ttlSecondsAfterFinished=600)
    assert finished["status"]["phase"] == "Succeeded", finished["status"]
    offset = process.log_size()
    marker = f"slow watch of {namespace}/ttl-long"
    wait_until(
        lambda: marker in process.log_since(offset), NEXT_CALL_SECONDS, "a timer call for the finished Execution"
    )
    kubectl("delete", "execution", "ttl-long", "-n", namespace, "--wait=false")
    wait_until(lambda: _gone(namespace, "ttl-long"), GONE_SECONDS, "the deleted Execution to go")
