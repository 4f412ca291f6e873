"""The queue's pure decisions: order, fairness across namespaces, head-of-line blocking, limits, capacity,
positions, queue deadlines, quota refusals, and the queue's view of an Execution."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from codeexec.config import OperatorConfig
from codeexec.queueing import (
    Entry,
    Limits,
    Requests,
    State,
    entry,
    free_capacity,
    is_idle_pool_pod,
    is_quota_refusal,
    is_sandbox,
    merge,
    plan_round,
    pod_requests,
    queue_order,
)

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
SMALL = Requests(500, 256 * 2**20)
ROOMY = Requests(100_000, 100 * 2**30)


def item(
    name: str,
    namespace: str = "a",
    *,
    age: int = 100,
    state: State = State.WAITING,
    requests: Requests = SMALL,
    deadline_in: int = 600,
    uid: str | None = None,
) -> Entry:
    """An Execution created `age` seconds before NOW."""
    return Entry(
        namespace=namespace,
        name=name,
        uid=uid or f"uid-{namespace}-{name}",
        created=NOW - timedelta(seconds=age),
        state=state,
        requests=requests,
        queue_deadline=NOW + timedelta(seconds=deadline_in),
    )


def started(decision: Any) -> list[str]:
    return [f"{started.namespace}/{started.name}" for started in decision.start]


def positions(decision: Any, entries: list[Entry]) -> dict[str, int]:
    names = {e.uid: f"{e.namespace}/{e.name}" for e in entries}
    return {names[uid]: waiting.position for uid, waiting in decision.waiting.items()}


# --- Order and fairness ---------------------------------------------------------------------------------


def test_order_is_creation_then_name_then_uid() -> None:
    entries = [
        item("b", age=10),
        item("a", age=10, uid="2"),
        item("a", age=10, uid="1"),
        item("z", age=20),
    ]
    expected = [("z", "uid-a-z"), ("a", "1"), ("a", "2"), ("b", "uid-a-b")]
    assert [(e.name, e.uid) for e in queue_order(entries, {})] == expected


def test_a_busy_namespace_cannot_starve_another() -> None:
    # Namespace a created 10 first; b's one came last. With room for two, b's starts second, not 11th.
    entries = [item(f"x{i:02d}", "a", age=100 - i) for i in range(10)] + [item("late", "b", age=1)]
    decision = plan_round(entries, SMALL + SMALL, Limits(), NOW)
    assert started(decision) == ["a/x00", "b/late"]
    assert positions(decision, entries)["a/x01"] == 1


def test_the_namespace_with_fewest_running_goes_first_even_if_younger() -> None:
    entries = [item("old", "a", age=50), item("young", "b", age=5), item("runs", "a", state=State.STARTED)]
    decision = plan_round(entries, ROOMY, Limits(max_running=2), NOW)
    assert started(decision) == ["b/young"]
    assert decision.waiting["uid-a-old"].message == "waiting for capacity: 2 of 2 sandboxes running in the cluster"


def test_positions_follow_the_fair_order_over_the_whole_queue() -> None:
    entries = [item(f"a{i}", "a", age=100 - i) for i in range(3)] + [item(f"b{i}", "b", age=50 - i) for i in range(2)]
    decision = plan_round(entries, Requests(), Limits(), NOW)
    assert started(decision) == []
    assert positions(decision, entries) == {"a/a0": 1, "b/b0": 2, "a/a1": 3, "b/b1": 4, "a/a2": 5}


def test_positions_count_this_rounds_starts() -> None:
    entries = [item("a0", "a", age=9), item("a1", "a", age=8), item("b0", "b", age=7)]
    decision = plan_round(entries, SMALL, Limits(), NOW)
    assert started(decision) == ["a/a0"]
    # a now has one running: b's head comes first.
    assert positions(decision, entries) == {"b/b0": 1, "a/a1": 2}


# --- Capacity, limits, head-of-line blocking ------------------------------------------------------------


def test_running_sandboxes_use_capacity() -> None:
    entries = [item("runs", state=State.STARTED), item("next", age=1)]
    assert started(plan_round(entries, SMALL, Limits(), NOW)) == []
    assert started(plan_round(entries, SMALL + SMALL, Limits(), NOW)) == ["a/next"]


def test_a_head_that_does_not_fit_blocks_everything_behind_it() -> None:
    big = Requests(1500, 256 * 2**20)
    entries = [item("runs", state=State.STARTED), item("big", age=10, requests=big), item("small", age=5)]
    decision = plan_round(entries, Requests(1800, 4 * 2**30), Limits(), NOW)
    assert started(decision) == [], "the small one must not overtake the big one"
    message = decision.waiting["uid-a-big"].message
    assert message == (
        "waiting for capacity: the next sandbox needs cpu 1500m, memory 256Mi; free: cpu 1300m, memory 3840Mi"
    )
    assert decision.waiting["uid-a-small"].message == message


def test_a_head_bigger_than_the_nodes_holds_up_nobody() -> None:
    huge = Requests(4000, 2**30)
    entries = [item("huge", age=10, requests=huge), item("small", age=5)]
    decision = plan_round(entries, Requests(2000, 4 * 2**30), Limits(), NOW)
    assert started(decision) == ["a/small"]
    assert decision.waiting["uid-a-huge"].message.startswith("waiting for capacity: needs cpu 4000m")


def test_the_cluster_limit_caps_what_runs() -> None:
    entries = [item(f"x{i}", age=10 - i) for i in range(5)]
    decision = plan_round(entries, ROOMY, Limits(max_running=3), NOW)
    assert started(decision) == ["a/x0", "a/x1", "a/x2"]
    assert [w.position for w in decision.waiting.values()] == [1, 2]


def test_a_namespace_at_its_limit_is_skipped_without_blocking_others() -> None:
    entries = [item("runs", "a", state=State.STARTED), item("a1", "a", age=50), item("b1", "b", age=1)]
    decision = plan_round(entries, ROOMY, Limits(max_running_per_namespace=1), NOW)
    assert started(decision) == ["b/b1"]
    assert decision.waiting["uid-a-a1"].message == "waiting for capacity: 1 of 1 sandboxes running in namespace a"


def test_a_namespace_refused_by_its_quota_is_skipped_with_the_apis_message() -> None:
    entries = [item("a1", "a", age=50), item("b1", "b", age=1)]
    refusal = '403 Forbidden: pods "a1" is forbidden: exceeded quota: q'
    decision = plan_round(entries, ROOMY, Limits(), NOW, {"a": refusal})
    assert started(decision) == ["b/b1"]
    assert decision.waiting["uid-a-a1"].message == refusal


# --- The backlog the warm pools yield to -----------------------------------------------------------------


def test_a_backlog_is_what_waits_for_room_on_the_nodes_only() -> None:
    """Round.backlog empties the warm pools (issue 8). Fails when Executions held by a limit, their quota or
    their own size count (emptying the pools cannot start them), or those short of room do not."""
    big = Requests(1500, 256 * 2**20)
    room = [item("runs", state=State.STARTED), item("big", age=10, requests=big), item("small", age=5)]
    assert plan_round(room, Requests(1800, 4 * 2**30), Limits(), NOW).backlog == 2
    capped = [item(f"x{i}", age=10 - i) for i in range(5)]
    assert plan_round(capped, ROOMY, Limits(max_running=3), NOW).backlog == 0
    per_namespace = [item("runs", "a", state=State.STARTED), item("a1", "a", age=50), item("b1", "b", age=1)]
    assert plan_round(per_namespace, ROOMY, Limits(max_running_per_namespace=1), NOW).backlog == 0
    refusal = "403 Forbidden: exceeded quota: q"
    assert plan_round([item("a1", "a", age=50)], ROOMY, Limits(), NOW, {"a": refusal}).backlog == 0
    huge = [item("huge", age=10, requests=Requests(4000, 2**30))]
    assert plan_round(huge, Requests(2000, 4 * 2**30), Limits(), NOW).backlog == 0
    assert plan_round([item("x")], ROOMY, Limits(), NOW).backlog == 0  # started: nothing waits
    # A namespace at its limit waits for that; another one's Executions behind a full node wait for room.
    mixed = [item("runs", "a", state=State.STARTED), item("a1", "a", age=50), item("b1", "b", age=9)]
    mixed.append(item("b2", "b", age=8))
    decision = plan_round(mixed, SMALL + SMALL, Limits(max_running_per_namespace=1), NOW)
    assert (started(decision), decision.backlog) == (["b/b1"], 0)  # b now at its limit too
    decision = plan_round(mixed, SMALL, Limits(max_running_per_namespace=2), NOW)
    assert (started(decision), decision.backlog) == ([], 3)
    decision = plan_round(mixed, SMALL, Limits(max_running_per_namespace=1), NOW)
    assert started(decision) == [] and decision.backlog == 2  # a1 waits for a's limit, b1 and b2 for room


def test_room_held_by_idle_pool_pods_is_waited_for_not_given_up_on() -> None:
    """On the demo's 2-CPU node the pools' idle pods leave 150m: a 500m Execution is not too big for the node,
    it waits for the pools to yield (fails when it is passed over as too big, and the pools never yield)."""
    entries = [item("first", age=10), item("second", age=5)]
    pooled = Requests(1500, 768 * 2**20)
    decision = plan_round(entries, Requests(150, 2**30), Limits(), NOW, pooled=pooled)
    assert started(decision) == [] and decision.backlog == 2
    assert decision.waiting["uid-a-first"].message == (
        "waiting for capacity: the next sandbox needs cpu 500m, memory 256Mi; free: cpu 150m, memory 1Gi"
    )
    beyond = plan_round(entries, Requests(150, 2**30), Limits(), NOW, pooled=Requests(200, 2**30))
    assert beyond.backlog == 0 and beyond.waiting["uid-a-first"].message.startswith("waiting for capacity: needs")


def test_idle_pool_pods_are_told_from_claimed_ones_and_others() -> None:
    pool = {"app.kubernetes.io/managed-by": "code-exec", "codeexec.io/pool": "py"}
    assert is_idle_pool_pod(pod(labels=pool))
    assert not is_idle_pool_pod(pod(labels=pool | {"codeexec.io/execution-uid": "u"}))  # claimed: a sandbox
    assert not is_idle_pool_pod(pod(labels={"codeexec.io/pool": "py"}))  # not made by code-exec
    assert not is_idle_pool_pod(pod(labels=SANDBOX_LABELS))


def test_nothing_waits_when_everything_fits() -> None:
    entries = [item(f"x{i}", age=10 - i) for i in range(4)]
    decision = plan_round(entries, ROOMY, Limits(), NOW)
    assert len(decision.start) == 4 and decision.waiting == {} and decision.expired == ()


def test_entries_not_accepted_or_finished_are_not_queued() -> None:
    entries = [item("new", state=State.NEW), item("done", state=State.FINISHED)]
    decision = plan_round(entries, Requests(), Limits(), NOW)
    assert decision == type(decision)()


# --- Queue deadline -------------------------------------------------------------------------------------


def test_an_entry_past_its_queue_deadline_expires_instead_of_starting() -> None:
    entries = [item("late", age=700, deadline_in=-1), item("fine", age=5)]
    decision = plan_round(entries, ROOMY, Limits(), NOW)
    assert [e.name for e in decision.expired] == ["late"]
    assert started(decision) == ["a/fine"]


# --- Merging what this process did since the index showed it -------------------------------------------


def test_local_knowledge_only_moves_an_entry_forward() -> None:
    entries = [item("x", state=State.STARTED), item("y"), item("z")]
    local = {"uid-a-x": State.WAITING, "uid-a-y": State.STARTED, "uid-a-z": State.FINISHED}
    assert [e.state for e in merge(entries, local)] == [State.STARTED, State.STARTED, State.FINISHED]


# --- Capacity of the nodes ------------------------------------------------------------------------------


def node(name: str, cpu: str, memory: str, *, ready: bool = True, unschedulable: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"unschedulable": unschedulable},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(
    cpu: str | None = None,
    memory: str | None = None,
    *,
    node_name: str | None = "n1",
    phase: str = "Running",
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    requests = {key: value for key, value in (("cpu", cpu), ("memory", memory)) if value is not None}
    return {
        "metadata": {"namespace": "x", "labels": labels or {}},
        "spec": {"nodeName": node_name, "containers": [{"resources": {"requests": requests}}], **spec},
        "status": {"phase": phase},
    }


SANDBOX_LABELS = {"app.kubernetes.io/managed-by": "code-exec", "codeexec.io/execution-uid": "u"}


def test_free_capacity_is_ready_schedulable_allocatable_minus_other_pods() -> None:
    nodes = [
        node("n1", "2", "24479284Ki"),
        node("n2", "8", "8Gi", ready=False),
        node("n3", "8", "8Gi", unschedulable=True),
    ]
    pods = [
        pod("100m", "70Mi"),
        pod("0.25", "129e6"),
        pod("100m", "1Gi", phase="Succeeded"),  # ended: the scheduler no longer counts it
        pod("1", "1Gi", node_name="n2"),  # on a node that does not count
        pod("50m", "1Mi", node_name=None),  # not placed yet: holds nothing
        pod("1", "1Gi", labels=SANDBOX_LABELS),  # ours: counted by the queue itself
    ]
    free = free_capacity(nodes, pods, is_sandbox)
    assert free == Requests(2000 - 100 - 250, 24479284 * 1024 - 70 * 2**20 - 129_000_000)


def test_pod_requests_take_the_larger_init_container_and_the_overhead() -> None:
    sandbox = pod("500m", "256Mi", initContainers=[{"resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}])
    sandbox["spec"]["overhead"] = {"cpu": "100m", "memory": "20Mi"}
    assert pod_requests(sandbox) == Requests(1100, 276 * 2**20)
    assert pod_requests(pod()) == Requests()
    assert pod_requests(pod("junk", "1.5Gi")) == Requests(0, 1536 * 2**20)


def test_sandboxes_are_recognised_by_both_labels() -> None:
    assert is_sandbox(pod(labels=SANDBOX_LABELS))
    assert not is_sandbox(pod(labels={"app.kubernetes.io/managed-by": "code-exec"}))


# --- Quota refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "refusal"),
    [
        (403, 'pods "x" is forbidden: exceeded quota: compute, requested: limits.cpu=500m', True),
        (403, 'pods "x" is forbidden: failed quota: compute: must specify limits.cpu', True),
        (403, 'pods "x" is forbidden: maximum cpu usage per Container is 250m, but limit is 500m', True),
        (403, 'pods "x" is forbidden: cpu max limit to request ratio per Pod is 1, but provided ratio is 2', True),
        (
            403,
            'pods "x" is forbidden: error looking up service account ns/default: serviceaccount "default" not found',
            True,
        ),
        (403, 'pods "x" is forbidden: violates PodSecurity "restricted:latest"', False),
        (422, 'Pod "x" is invalid: spec.containers[0].image: Required value', False),
        (409, "exceeded quota", False),
        (None, "exceeded quota", False),
    ],
)
def test_quota_and_limit_range_refusals_are_told_from_other_errors(
    status: int | None, message: str, refusal: bool
) -> None:
    assert is_quota_refusal(status, message) is refusal


# --- The queue's view of an Execution -------------------------------------------------------------------


def body(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "a", "name": "x", "uid": "u1", "creationTimestamp": "2030-01-02T03:00:00Z"},
        "spec": {"language": "python", "code": "", **spec},
        "status": status or {},
    }


def test_entry_state_requests_position_and_deadline_come_from_the_execution() -> None:
    config = OperatorConfig()
    created = datetime(2030, 1, 2, 3, 0, 0, tzinfo=UTC)
    queued = entry(body({"phase": "Pending", "resources": {"cpu": "1", "memory": "1Gi"}, "queuePosition": 4}), config)
    assert (queued.state, queued.requests, queued.position) == (State.WAITING, Requests(1000, 2**30), 4)
    assert queued.queue_deadline == created + timedelta(seconds=1800)
    assert entry(body(), config).state == State.NEW
    assert entry(body({"phase": "Pending", "podName": "p"}), config).state == State.STARTED
    assert entry(body({"phase": "Running", "podName": "p"}), config).state == State.STARTED
    # Accepted before the queue existed: the operator's defaults.
    assert entry(body({"phase": "Pending"}), config).requests == Requests(500, 256 * 2**20)
    assert entry(body(queueTimeoutSeconds=30), config).queue_deadline == created + timedelta(seconds=30)
    short = OperatorConfig(default_queue_timeout_seconds=900, max_queue_timeout_seconds=60)
    assert entry(body(), short).queue_deadline == created + timedelta(seconds=60)


def test_ready_pool_pods_start_the_executions_they_fit_without_free_capacity() -> None:
    """One ready pod of template t1 in team-a: the oldest Execution it fits takes it; the next one it fits and
    one it does not fit wait (no capacity is free); the limits still apply; a pod in another namespace fits
    nobody here."""
    fits = [dataclasses.replace(item(f"a{n}", "team-a", age=100 - n), warm_template="t1") for n in range(2)]
    cold = item("b0", "team-b")
    decision = plan_round([*fits, cold], Requests(), Limits(), NOW, {}, {("team-a", "t1"): 1})
    assert started(decision) == ["team-a/a0"]
    assert set(decision.waiting) == {fits[1].uid, cold.uid}
    limited = plan_round(fits, Requests(), Limits(max_running_per_namespace=1), NOW, {}, {("team-a", "t1"): 2})
    assert started(limited) == ["team-a/a0"]
    assert plan_round(fits, Requests(), Limits(), NOW, {}, {("team-b", "t1"): 1}).start == ()
