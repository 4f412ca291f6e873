"""e2e: the execution queue on the real cluster (issue 8, items 1 and 2): bursts beyond the configured
capacity wait visibly and all succeed, in creation order, fairly across namespaces, within the cluster-wide
and per-namespace limits, with a queue deadline of their own, behind a ResourceQuota, and across an operator
killed with SIGKILL. Each test runs its own operator with the limits it needs (own_operator), and watches
every sandbox pod for the whole test: how many per Execution, in which order, how many at once."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

import pytest

from tests.e2e.bursts import (
    SandboxPods,
    by_namespace,
    create_at_once,
    creation_order,
    ever_queued,
    wait_terminal,
    watching,
)
from tests.e2e.executions import ExecutionWatch, StartOperator, execution_manifest, uid
from tests.e2e.kube import kubectl, kubectl_json, wait_until

pytestmark = pytest.mark.e2e

# From the first creation to the last terminal phase of a burst that runs two at a time: the node has
# 2 cores, shared with whatever else runs on the cluster.
BURST_TIMEOUT = 300


def trivial(index: int, **spec: Any) -> dict[str, Any]:
    """A short Python Execution printing and returning its index; zero-padded names keep the creation
    order also among Executions created within the same second (the queue orders by name then)."""
    return execution_manifest(
        f"q-{index:02d}", "python", f"print({index})\nreturn {index}\n", timeoutSeconds=30, **spec
    )


def names(manifests: list[dict[str, Any]]) -> list[str]:
    return [manifest["metadata"]["name"] for manifest in manifests]


def assert_succeeded_once_each(found: dict[str, Any], pods: SandboxPods) -> None:
    """Every trivial Execution Succeeded with its own output, and ran in exactly one pod."""
    per_execution = pods.pods_per_execution()
    for name, execution in found.items():
        status = execution.get("status") or {}
        index = int(name.removeprefix("q-"))
        assert (status.get("phase"), status.get("stdout"), status.get("result")) == (
            "Succeeded",
            f"{index}\n",
            index,
        ), (name, status)
        assert per_execution[uid(execution)] == 1, f"{name} had {per_execution[uid(execution)]} pods"


class Burst(NamedTuple):
    namespace: str
    found: dict[str, Any]  # name → the Execution, terminal
    pods: SandboxPods
    watch: ExecutionWatch


def run_burst(
    own_operator: StartOperator,
    count: int,
    meanwhile: Callable[[str], object] = lambda namespace: None,
    ahead: int = 0,
    **env: str,
) -> Burst:
    """`count` trivial Executions created at once in the namespace of an operator started with `env`, run
    to their ends (`meanwhile` called with the namespace after their creation), and what the watches saw.
    The first `ahead` of them are created before the others, which come once their sandboxes exist."""
    own = own_operator(**env)
    namespace = own.namespaces[0]
    manifests = [trivial(index) for index in range(count)]
    with watching(own.namespaces) as (pods, watches):
        if ahead:
            create_at_once(namespace, manifests[:ahead])
            wait_until(lambda: len(pods.created()) >= ahead, 120, f"{ahead} sandboxes")
        create_at_once(namespace, manifests[ahead:])
        meanwhile(namespace)
        found = wait_terminal(watches[namespace], names(manifests), BURST_TIMEOUT)
        pods.check_alive()
    return Burst(namespace, found, pods, watches[namespace])


def named(found: dict[str, Any], uids: list[str]) -> list[str]:
    """Execution uids as their names, for readable failures."""
    names_by_uid = {uid(execution): name for name, execution in found.items()}
    return [names_by_uid[item] for item in uids]


def seconds_waited(execution: dict[str, Any]) -> float:
    """From creation (whole seconds) to the start of its code."""
    created = datetime.fromisoformat(execution["metadata"]["creationTimestamp"])
    return (datetime.fromisoformat(execution["status"]["startedAt"]) - created).total_seconds()


def queue_column(namespace: str) -> list[str]:
    """The QUEUE column of `kubectl get executions`, as a user sees it (kubectl aligns the cells of a
    column under its header)."""
    header, *rows = kubectl("get", "executions", "-n", namespace).splitlines()
    start = header.index(" QUEUE") + 1
    return [row[start:].split(maxsplit=1)[0] if row[start : start + 1].strip() else "" for row in rows]


def test_burst_beyond_capacity_waits_visibly_within_the_limit_and_all_succeed(
    own_operator: StartOperator,
) -> None:
    """Safeguard: the cluster-wide limit (CODEEXEC_MAX_RUNNING) and the queue in front of the sandboxes.
    Seen failing against the operator before the queue (no position ever shown; there every sandbox
    of a burst is created at once, see the other tests)."""
    count = 30
    # What a user sees meanwhile: positions in the QUEUE column.
    namespace, found, pods, watch = run_burst(
        own_operator,
        count,
        lambda namespace: wait_until(lambda: any(map(str.isdigit, queue_column(namespace))), 60, "QUEUE positions"),
        CODEEXEC_MAX_RUNNING="2",
    )

    assert_succeeded_once_each(found, pods)
    assert len(pods.pods_per_execution()) == count
    assert pods.most_running()["all"] == 2, "never more than the limit, and the capacity used"
    queued = {name: ever_queued(watch, name) for name in found}
    waited = sorted(name for name, statuses in queued.items() if statuses)
    assert len(waited) >= count // 2, f"only {waited} were seen waiting"
    positions = {
        name: [status["queuePosition"] for status in queued[name] if "queuePosition" in status] for name in waited
    }
    assert all(positions.values()), f"each one waiting shows its position: {positions}"
    seen = [position for shown in positions.values() for position in shown]
    assert min(seen) >= 1 and max(seen) >= count // 2, positions
    for name in waited:
        assert all(status.get("phase") == "Pending" for status in queued[name]), (name, queued[name])
        assert found[name]["status"].get("queuePosition") is None, "the position goes when it leaves the queue"

    # Each Execution that waited says so in an Event when it leaves the queue.
    def dequeued() -> set[str] | None:
        events = kubectl_json("get", "events", "-n", namespace, "--field-selector", "reason=Dequeued")["items"]
        objects = {event["involvedObject"]["name"] for event in events}
        return objects if objects >= set(waited) else None

    wait_until(dequeued, 30, f"Dequeued events for {waited}")


def test_executions_start_in_creation_order(own_operator: StartOperator) -> None:
    """Safeguard: the queue's order (creationTimestamp, then name, then uid). Seen failing with the
    order's sort key replaced by the uid. The first one runs before the others come: the order is that
    of the Executions waiting (of a burst arriving at a free slot, whichever the operator sees first may
    take it)."""
    _, found, pods, _ = run_burst(own_operator, 6, ahead=1, CODEEXEC_MAX_RUNNING="1")

    assert_succeeded_once_each(found, pods)
    assert pods.most_running()["all"] == 1
    assert named(found, pods.start_order()) == named(found, creation_order(found.values()))
    started = [found[name]["status"]["startedAt"] for name in sorted(found)]
    assert started == sorted(started)


def test_a_busy_namespace_does_not_starve_another(own_operator: StartOperator) -> None:
    """Safeguard: fairness across namespaces (the namespace with the fewest running sandboxes goes
    next). Seen failing with the fair rule replaced by plain creation order across namespaces: the other
    namespace's two started 11th and 12th."""
    own = own_operator(2, CODEEXEC_MAX_RUNNING="2")
    busy, other = own.namespaces
    busy_burst = [trivial(index) for index in range(10)]
    other_burst = [trivial(index) for index in range(2)]
    with watching(own.namespaces) as (pods, watches):
        create_at_once(busy, busy_burst)
        wait_until(lambda: len(pods.created()) >= 2, 120, "the busy namespace's first sandboxes")
        create_at_once(other, other_burst)
        started_before = len(pods.created())
        found_busy = wait_terminal(watches[busy], names(busy_burst), BURST_TIMEOUT)
        found_other = wait_terminal(watches[other], names(other_burst), BURST_TIMEOUT)
        pods.check_alive()

    assert_succeeded_once_each(found_busy, pods)
    assert_succeeded_once_each(found_other, pods)
    assert started_before <= 4, "most of the busy namespace's burst was still waiting when the other's came"
    order = pods.start_order()
    positions = [order.index(uid(execution)) for execution in found_other.values()]
    # Strict creation order would start them after all ten of the busy namespace's.
    assert max(positions) < started_before + 4, (started_before, positions)
    assert pods.most_running()["all"] == 2


def test_per_namespace_limit_holds_while_the_cluster_has_room(own_operator: StartOperator) -> None:
    """Safeguard: the per-namespace limit (CODEEXEC_MAX_RUNNING_PER_NAMESPACE). Seen failing with it
    set to 0 (no limit): three ran at once in a namespace."""
    own = own_operator(2, CODEEXEC_MAX_RUNNING="3", CODEEXEC_MAX_RUNNING_PER_NAMESPACE="1")
    first, second = own.namespaces
    manifests = [trivial(index) for index in range(3)]
    with watching(own.namespaces) as (pods, watches):
        create_at_once(first, manifests)
        create_at_once(second, manifests)
        found = {
            namespace: wait_terminal(watch, names(manifests), BURST_TIMEOUT) for namespace, watch in watches.items()
        }
        pods.check_alive()
        messages = [
            status.get("message", "") for name in names(manifests) for status in ever_queued(watches[first], name)
        ]

    for executions in found.values():
        assert_succeeded_once_each(executions, pods)
    assert pods.most_running(by_namespace) == {first: 1, second: 1}
    assert pods.most_running()["all"] == 2, "both namespaces ran at once: the cluster limit had room"
    assert any(first in message for message in messages), f"no message names the namespace's limit: {messages}"


HOLDER = "import time\nprint('holding', flush=True)\ntime.sleep(15)\nreturn 'held'\n"


def test_queue_deadline_ends_a_long_wait_and_the_run_timeout_starts_with_the_code(
    own_operator: StartOperator,
) -> None:
    """Safeguards: the queue deadline (spec.queueTimeoutSeconds → Failed/QueueTimeout, without a pod)
    and the run timeout counted from the code's start, not the creation. Seen failing with the
    deadline ignored (the impatient one stayed Pending behind the holder) and, separately, with the timeout
    counted from the creation (the holder, which had waited for node capacity, TimedOut)."""
    own = own_operator(CODEEXEC_MAX_RUNNING="1")
    namespace = own.namespaces[0]
    holder = execution_manifest("holder", "python", HOLDER, timeoutSeconds=60)
    impatient = execution_manifest("impatient", "python", "print('never')\n", queueTimeoutSeconds=3)
    patient = execution_manifest("patient", "python", "print('patient')\n", timeoutSeconds=5)
    with watching(own.namespaces) as (pods, watches):
        watch = watches[namespace]
        create_at_once(namespace, [holder])
        wait_until(lambda: (watch.latest("holder") or {}).get("status", {}).get("phase") == "Running", 120, "holder")
        create_at_once(namespace, [impatient, patient])
        gave_up = wait_terminal(watch, ["impatient"], 60)["impatient"]
        holder_then = (watch.latest("holder") or {}).get("status", {})
        found = wait_terminal(watch, ["holder", "patient"], BURST_TIMEOUT)
        pods.check_alive()

    status = gave_up["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "QueueTimeout"), status
    assert holder_then.get("phase") == "Running", "it gave up while the slot was still taken"
    assert uid(gave_up) not in pods.pods_per_execution(), "it never got a pod"
    assert found["holder"]["status"]["result"] == "held"
    patient_status = found["patient"]["status"]
    assert (patient_status["phase"], patient_status["stdout"]) == ("Succeeded", "patient\n"), patient_status
    assert seconds_waited(found["patient"]) > 5 + 1, "it waited longer than its timeout before its code started"


def test_resource_quota_keeps_executions_queued_not_failed(own_operator: StartOperator) -> None:
    """Safeguard: a pod create refused by a ResourceQuota leaves the Execution Pending/Queued with the
    API's message, and only its namespace waits. Seen failing against the operator before the queue
    (Failed with the quota's 403). (Not caught: a refusal holding up every namespace until the next
    timer round; the other namespace's Execution then starts a round later, still before the last.)"""
    own = own_operator(2, CODEEXEC_MAX_RUNNING="4")
    limited, free = own.namespaces
    kubectl("create", "quota", "one-pod", "--hard=pods=1", "-n", limited)
    # Until the quota controller has computed its usage, the API refuses every pod in the namespace.
    wait_until(
        lambda: kubectl_json("get", "resourcequota", "one-pod", "-n", limited).get("status", {}).get("used"),
        60,
        "the quota's usage",
    )
    manifests = [trivial(index) for index in range(3)]
    with watching(own.namespaces) as (pods, watches):
        create_at_once(limited, manifests)
        create_at_once(free, [trivial(7)])
        found_limited = wait_terminal(watches[limited], names(manifests), BURST_TIMEOUT)
        found_free = wait_terminal(watches[free], ["q-07"], BURST_TIMEOUT)
        pods.check_alive()
        histories = {name: watches[limited].statuses(name) for name in found_limited}

    assert_succeeded_once_each(found_limited, pods)
    assert_succeeded_once_each(found_free, pods)
    messages = [
        status.get("message", "")
        for history in histories.values()
        for status in history
        if (status.get("phase"), status.get("reason")) == ("Pending", "Queued")
    ]
    assert any("exceeded quota" in message for message in messages), messages
    assert [status.get("phase") for history in histories.values() for status in history].count("Failed") == 0
    order = pods.start_order()
    last_limited = max(order.index(uid(execution)) for execution in found_limited.values())
    assert order.index(uid(found_free["q-07"])) < last_limited, "the quota of one namespace held up another"


# The sandboxes test_queue_survives_an_operator_killed_with_sigkill lets run at once.
MAX_RUNNING = 2


def test_queue_survives_an_operator_killed_with_sigkill(own_operator: StartOperator) -> None:
    """Safeguard: the queue derived from the cluster's state (Executions and their pods), rebuilt at
    start-up. Seen failing against the operator before the queue (after the restart the rest did not
    start in creation order).
    Two Executions that start at the same moment (both slots free at once) are launched side by side, so
    their pods may be created in either order (seen once, 2026-12-02: q-17's pod before q-16's):
    each may be at most one place (MAX_RUNNING - 1) from its place in creation order."""
    own = own_operator(CODEEXEC_MAX_RUNNING=str(MAX_RUNNING))
    namespace = own.namespaces[0]
    manifests = [trivial(index) for index in range(20)]
    with watching(own.namespaces) as (pods, watches):
        watch = watches[namespace]
        create_at_once(namespace, manifests)
        wait_until(lambda: len(pods.created()) >= 4, 120, "four sandboxes")
        own.process.kill()
        # The started ones finish while no operator runs: their slots free, nothing records it yet.
        wait_until(lambda: not pods.running_now(), 120, "the started sandboxes to finish")
        started_while_up = pods.start_order()
        own.process.start()
        found = wait_terminal(watch, names(manifests), BURST_TIMEOUT)
        pods.check_alive()

    assert_succeeded_once_each(found, pods)
    assert len(pods.pods_per_execution()) == len(manifests), "none lost"
    assert len(started_while_up) < len(manifests) - 4, "most were still queued at the kill"
    queued_at_the_kill = [item for item in creation_order(found.values()) if item not in started_while_up]
    expected = named(found, started_while_up + queued_at_the_kill)
    started = named(found, pods.start_order())
    assert sorted(started) == sorted(expected)
    displaced = {name: (expected.index(name), place) for place, name in enumerate(started)}
    assert all(abs(want - place) < MAX_RUNNING for want, place in displaced.values()), (started, expected)
    assert pods.most_running()["all"] <= MAX_RUNNING
