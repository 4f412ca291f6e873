"""The lifecycle and the queue's dispatch, as Kopf's handlers call them, against the fake ClusterApi:
queueing and starting, slots freed, quota refusals, queue deadlines, restarts, a lagging index, write
conflicts, and the status writes an Execution costs."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kopf
import pytest

from codeexec import (
    bindingtoken,
    builders,
    dispatch,
    egress,
    handlers,
    lifecycle,
    milestones,
    queueing,
    resolver,
    status,
)
from codeexec.api import ApiError
from codeexec.builders import ExecutionRef, PoolRef, child_name
from codeexec.config import OperatorConfig
from codeexec.dispatch import Dispatcher
from tests.unit import factories
from tests.unit.fakes import (
    API_SERVICE,
    BROKER_SERVICE,
    NAME,
    NAMESPACE,
    POD_NAME,
    FakeCluster,
    execution,
    sandbox_binding,
)

LOGGER = logging.getLogger("test")


@pytest.fixture(autouse=True)
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Kubernetes Events need a running operator: the reasons announced instead."""
    announced: list[str] = []
    monkeypatch.setattr(lifecycle, "_announce", lambda _, milestone: milestone and announced.append(milestone.reason))
    return announced


class LiveIndex(Mapping[str, list[queueing.Entry]]):
    """Kopf's index over the fake's Executions, up to date (or frozen as of `freeze`: a lagging watch)."""

    def __init__(self, cluster: FakeCluster, config: OperatorConfig) -> None:
        self._cluster, self._config = cluster, config
        self.frozen: list[queueing.Entry] | None = None

    def entries(self) -> list[queueing.Entry]:
        if self.frozen is not None:
            return self.frozen
        items = self._cluster.executions.items.values()
        return [queueing.entry(i, self._config) for i in items if not status.is_terminal(i["status"].get("phase"))]

    def freeze(self) -> None:
        self.frozen = self.entries()

    def __getitem__(self, key: str) -> list[queueing.Entry]:
        assert key == handlers.QUEUE
        return self.entries()

    def __iter__(self) -> Iterator[str]:
        return iter([handlers.QUEUE])

    def __len__(self) -> int:
        return 1


class LiveWarmIndex(Mapping[tuple[str, str], list[str]]):
    """Kopf's index of ready pool pods over the fake's pods (handlers.warm_pods on each), up to date."""

    def __init__(self, cluster: FakeCluster) -> None:
        self._cluster = cluster

    def _entries(self) -> dict[tuple[str, str], list[str]]:
        found: dict[tuple[str, str], list[str]] = {}
        for pod in self._cluster.sandboxes.pods.values():
            labels = pod["metadata"].get("labels") or {}
            if "codeexec.io/pool" in labels and "codeexec.io/execution-uid" not in labels:
                for key, name in handlers.warm_pods(body=kopf.Body(pod)).items():
                    found.setdefault(key, []).append(name)
        return found

    def __getitem__(self, key: tuple[str, str]) -> list[str]:
        return self._entries()[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


class Pools:
    """The PoolKeeper in the memo: records which pools reconcile, and what the Dispatcher's backlog was then."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self.reconciled: list[tuple[str, str, int]] = []

    def reconcile(self, namespace: str, name: str) -> None:
        self.reconciled.append((namespace, name, self._dispatcher.backlog()))


class Operator:
    """The handlers with their memo, as Kopf runs them, over one FakeCluster (with one WarmPool, "py")."""

    def __init__(self, cluster: FakeCluster | None = None, **settings: Any) -> None:
        self.cluster = cluster or FakeCluster({})
        self.config = OperatorConfig(**settings)
        self.dispatcher = Dispatcher(self.cluster, self.config)
        self.pools = Pools(self.dispatcher)
        self.memo = kopf.Memo(config=self.config, cluster=self.cluster, dispatcher=self.dispatcher, pools=self.pools)
        self.index = LiveIndex(self.cluster, self.config)
        self.warm_index = LiveWarmIndex(self.cluster)

    def indexes(self) -> dict[str, Any]:
        """The Kopf indexes every handler gets, by their ids."""
        pool_index = {handlers.POOLS: [(NAMESPACE, "py")]}
        return {handlers.QUEUE_INDEX: self.index, handlers.WARM_INDEX: self.warm_index, handlers.POOL_INDEX: pool_index}

    def add(self, name: str, uid: str, namespace: str = NAMESPACE, **body_status: Any) -> dict[str, Any]:
        item = execution(name, uid, namespace, **body_status)
        self.cluster.executions.add(item)
        return item

    def start(self, name: str = NAME, namespace: str = NAMESPACE, body_status: dict[str, Any] | None = None) -> None:
        """start_execution with the event's body, whose status may be older than the API's."""
        current = self.cluster.executions.items[namespace, name]
        body = {**current, "status": body_status if body_status is not None else dict(current["status"])}
        kwargs = self.indexes()
        handlers.start_execution(body=kopf.Body(body), memo=self.memo, logger=LOGGER, **kwargs)

    def finish(
        self, name: str = NAME, namespace: str = NAMESPACE, *, phase: str = "Succeeded", event: str = "MODIFIED"
    ) -> None:
        """The sandbox's program ended with exit code 0: a pod event (`phase` Running: the kubelet has not
        stopped the pod yet)."""
        item = self.cluster.executions.items[namespace, name]
        pod = owned_pod(item["metadata"]["uid"], phase=phase, state=factories.terminated(0))
        pod["metadata"]["name"] = child_name(lifecycle.execution_ref(item))
        pod["metadata"]["ownerReferences"] = [
            {"apiVersion": "codeexec.io/v1alpha1", "kind": "Execution", "name": name, "uid": item["metadata"]["uid"]}
        ]
        kwargs = self.indexes()
        handlers.pod_event(event={"type": event}, body=kopf.Body(pod), memo=self.memo, logger=LOGGER, **kwargs)

    def tick(self, name: str = NAME, namespace: str = NAMESPACE) -> None:
        """watch_execution's timer for one Execution."""
        body = kopf.Body(dict(self.cluster.executions.items[namespace, name]))
        kwargs = self.indexes()
        handlers.watch_execution(body=body, memo=self.memo, logger=LOGGER, **kwargs)

    def status(self, name: str = NAME) -> dict[str, Any]:
        found: dict[str, Any] = self.cluster.executions.items[NAMESPACE, name]["status"]
        return found

    def pods(self) -> list[str]:
        return sorted(name for _, name in self.cluster.sandboxes.pods)


def owned_pod(uid: str = factories.UID, **fields: Any) -> dict[str, Any]:
    pod = factories.pod(**fields)
    pod["metadata"]["labels"] = {"codeexec.io/execution-uid": uid}
    return pod


def creates(cluster: FakeCluster) -> list[str]:
    return [call for call in cluster.calls if call.startswith("create_")]


# --- A new Execution ------------------------------------------------------------------------------------


def test_a_new_execution_with_room_gets_its_sandbox_at_once() -> None:
    operator = Operator()
    operator.start()
    assert creates(operator.cluster) == ["create_configmap", "create_networkpolicy", "create_pod"]
    assert operator.pods() == [POD_NAME]
    [accepted] = operator.cluster.executions.patches
    assert accepted["phase"] == "Pending" and accepted["resources"] == {"cpu": "500m", "memory": "256Mi"}
    assert "reason" not in accepted and "queuePosition" not in accepted


def test_a_new_execution_without_room_waits_visibly_with_its_position() -> None:
    operator = Operator(max_running=1)
    operator.add("first", "uid-1", phase="Running", podName="first-pod", resources={"cpu": "500m"})
    operator.start()
    assert operator.pods() == [], "no sandbox while the limit is reached"
    current = operator.status()
    assert (current["phase"], current["reason"], current["queuePosition"]) == ("Pending", "Queued", 1)
    assert current["message"] == "waiting for capacity: 1 of 1 sandboxes running in the cluster."


def test_a_finished_run_starts_the_next_in_line_at_once(events: list[str]) -> None:
    operator = Operator(max_running=1)
    operator.add("first", "uid-first", phase="Pending", resources={"cpu": "500m", "memory": "256Mi"})
    operator.start("first")
    operator.start()
    assert operator.pods() == ["first-uid-firs"]
    assert operator.status()["reason"] == "Queued"
    operator.finish("first")
    assert operator.status("first")["phase"] == "Succeeded"
    assert operator.pods() == [POD_NAME], "the queued one starts when the slot frees, not at the next timer"
    assert events[-2:] == ["Dequeued", "SandboxCreated"]


def test_the_room_of_a_finished_run_is_free_once_its_pod_has_stopped() -> None:
    # The kubelet reports the container's end before it stops the pod; the scheduler counts the pod till then.
    operator = Operator(max_running=1)
    operator.add("first", "uid-first", phase="Running", podName="first-uid-firs", resources={"cpu": "500m"})
    operator.start()
    operator.finish("first", phase="Running")
    assert operator.status("first")["phase"] == "Succeeded"
    assert operator.pods() == [], "its pod still holds the room"
    operator.finish("first", event="DELETED")
    assert operator.pods() == [POD_NAME]


def test_the_success_path_costs_three_status_writes() -> None:
    operator = Operator()
    operator.start()
    pod = owned_pod(phase="Running", state={"running": {"startedAt": factories.timestamp(factories.NOW)}})
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": "codeexec.io/v1alpha1", "kind": "Execution", "name": NAME, "uid": factories.UID}
    ]
    kwargs = operator.indexes()
    handlers.pod_event(event={"type": "MODIFIED"}, body=kopf.Body(pod), memo=operator.memo, logger=LOGGER, **kwargs)
    operator.finish()
    phases = [patch.get("phase") for patch in operator.cluster.executions.patches]
    assert phases == ["Pending", "Running", "Succeeded"]


def test_a_queued_execution_costs_no_more_writes_until_its_position_moves() -> None:
    operator = Operator(max_running=1)
    operator.add("first", "uid-first", phase="Running", podName="first-pod", resources={"cpu": "500m"})
    operator.start()
    operator.tick()
    operator.tick()
    assert len(operator.cluster.executions.patches) == 1


def test_stale_body_of_a_finished_execution_creates_nothing() -> None:
    # After a restart the listing's body says nothing yet; a pod event has since written the outcome.
    cluster = FakeCluster({"phase": "Succeeded", "podName": POD_NAME})
    Operator(cluster).start(body_status={})
    assert creates(cluster) == [] and cluster.executions.patches == []


def test_pod_created_before_a_restart_is_adopted_not_created_again() -> None:
    # The operator died between creating the pod and its first pod event.
    cluster = FakeCluster({"phase": "Pending"}, pod=owned_pod(state=factories.terminated(0)))
    Operator(cluster).start()
    assert creates(cluster) == []
    assert cluster.executions.patches == [{"podName": POD_NAME}]


def test_pod_of_another_execution_under_the_name_is_not_adopted() -> None:
    cluster = FakeCluster({"phase": "Pending"}, pod=owned_pod("someone-else"))
    Operator(cluster).start()
    assert cluster.executions.patches == []
    assert cluster.sandboxes.pod is not None
    assert cluster.sandboxes.pod["metadata"]["labels"] == {"codeexec.io/execution-uid": "someone-else"}


def test_a_rejected_spec_never_enters_the_queue() -> None:
    operator = Operator(max_queue_timeout_seconds=60)
    operator.cluster.executions.execution["spec"]["queueTimeoutSeconds"] = 61
    operator.start()
    assert (operator.status()["phase"], operator.status()["reason"]) == ("Rejected", "QueueTimeoutTooLong")
    assert operator.pods() == []


# --- Fairness and restarts ------------------------------------------------------------------------------


def test_after_a_restart_the_queue_is_rebuilt_in_the_same_order() -> None:
    operator = Operator(max_running=1)
    for index in range(3):
        operator.add(f"q{index}", f"uid-{index}", phase="Pending", reason="Queued", queuePosition=index + 1)
    # A fresh operator resumes them in another order; the oldest (then by name) starts.
    restarted = Operator(operator.cluster, max_running=1)
    for name in ("q2", "q0", "q1"):
        restarted.start(name)
    assert restarted.pods() == ["q0-uid-0"]


def test_two_quick_decisions_neither_overfill_nor_launch_one_twice_while_the_index_lags() -> None:
    operator = Operator(max_running=1)
    operator.add("a", "uid-a", phase="Pending")
    operator.add("b", "uid-b", phase="Pending")
    operator.index.freeze()  # the watch has not delivered the first start yet
    operator.start("a")
    operator.start("b")
    assert operator.pods() == ["a-uid-a"]
    assert operator.cluster.calls.count("find_pod") == 1, "a is not launched again (and its pod adopted)"
    assert operator.cluster.executions.patches == []


def test_timer_decisions_are_rate_limited_across_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    operator = Operator()
    decisions = []
    original = Dispatcher._decide
    monkeypatch.setattr(Dispatcher, "_decide", lambda self, *a: decisions.append(1) or original(self, *a))
    operator.add("a", "uid-a", phase="Pending")
    operator.add("b", "uid-b", phase="Pending")
    operator.tick("a")
    operator.tick("b")
    assert len(decisions) == 1


# --- Quotas and deadlines -------------------------------------------------------------------------------


def test_a_quota_refusal_keeps_the_execution_queued_with_the_apis_message() -> None:
    operator = Operator()
    refusal = '403 Forbidden: pods "hello" is forbidden: exceeded quota: q, requested: limits.cpu=500m'
    operator.cluster.sandboxes.refusal = ApiError(refusal, 403)
    operator.start()
    current = operator.status()
    assert (current["phase"], current["reason"], current["message"]) == ("Pending", "Queued", f"{refusal}.")
    # The namespace is skipped for a while: no second attempt at once.
    operator.add("other", "uid-other", phase="Pending")
    operator.start("other")
    assert operator.cluster.calls.count("create_pod") == 1
    # A sandbox of that namespace finishing lets it try again; the quota has room now.
    operator.cluster.sandboxes.refusal = None
    operator.add("done", "uid-done", phase="Running", podName="done-uid-done")
    operator.finish("done")
    assert operator.pods() == ["hello-0f1e2d3c", "other-uid-othe"]


def test_another_permanent_create_error_still_fails() -> None:
    operator = Operator()
    operator.cluster.sandboxes.refusal = ApiError('403 Forbidden: violates PodSecurity "restricted"', 403)
    operator.start()
    assert (operator.status()["phase"], operator.status()["reason"]) == ("Failed", "PodFailed")


def test_a_queued_execution_past_its_deadline_fails_with_queue_timeout() -> None:
    operator = Operator(max_running=1)
    operator.add("first", "uid-first", phase="Running", podName="first-pod")
    operator.start()
    operator.cluster.executions.execution["metadata"]["creationTimestamp"] = "2000-01-01T00:00:00Z"
    operator.tick()
    current = operator.status()
    assert (current["phase"], current["reason"]) == ("Failed", "QueueTimeout")
    assert "queuePosition" not in current
    assert operator.pods() == []


def test_the_position_is_rewritten_when_it_moved_at_most_every_refresh_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    operator = Operator(max_running=1)
    operator.add("first", "uid-first", phase="Running", podName="first-pod")
    operator.add("early", "uid-early", phase="Pending", reason="Queued", queuePosition=1)
    operator.cluster.executions.items[NAMESPACE, "early"]["metadata"]["creationTimestamp"] = "2030-01-02T02:00:00Z"
    operator.start()
    assert operator.status()["queuePosition"] == 2
    operator.cluster.executions.items[NAMESPACE, "early"]["status"] = {"phase": "Failed"}  # gone from the queue
    monkeypatch.setattr(dispatch, "TIMER_ROUND_SECONDS", 0)
    operator.tick()
    assert operator.status()["queuePosition"] == 2, "not again within the refresh period"
    monkeypatch.setattr(dispatch, "POSITION_REFRESH_SECONDS", 0)
    operator.tick()
    assert operator.status()["queuePosition"] == 1


# --- Pod sync -------------------------------------------------------------------------------------------


def test_sync_retries_a_conflicting_status_patch_on_a_fresh_read() -> None:
    cluster = FakeCluster({"phase": "Running", "podName": POD_NAME}, pod=None)
    cluster.executions.conflicts = 1
    execution_ref = ExecutionRef(NAMESPACE, NAME, factories.UID)
    pod = owned_pod(phase="Succeeded", state=factories.terminated(0))
    assert lifecycle.sync_with_pod(cluster, OperatorConfig(), execution_ref, pod)
    assert cluster.calls.count("read_execution") == 2
    assert [patch["phase"] for patch in cluster.executions.patches] == ["Succeeded"]
    assert cluster.calls[-1] == "delete_sandbox"


def test_sync_gives_up_after_repeated_conflicts() -> None:
    cluster = FakeCluster({"phase": "Running", "podName": POD_NAME}, pod=None)
    cluster.executions.conflicts = lifecycle.SYNC_ATTEMPTS
    execution_ref = ExecutionRef(NAMESPACE, NAME, factories.UID)
    pod = owned_pod(phase="Succeeded", state=factories.terminated(0))
    with pytest.raises(ApiError):
        lifecycle.sync_with_pod(cluster, OperatorConfig(), execution_ref, pod)
    assert cluster.executions.patches == []
    assert "delete_sandbox" not in cluster.calls


def test_dequeued_event_says_how_long_it_waited() -> None:
    assert milestones.dequeued(12.4).message == "Left the queue after waiting 12 s"


# --- Warm pools -------------------------------------------------------------------------------------------


def pool_pod(name: str, *, ready: bool = True, resource_version: str = "7", **settings: Any) -> dict[str, Any]:
    """An idle pod of a Python pool with the default sandbox size, as the API returns it once started."""
    config = OperatorConfig(**settings)
    probe = egress.isolation_probe(API_SERVICE)
    pod = builders.warm_pod(PoolRef(NAMESPACE, "py", "pool-uid"), factories.PYTHON, 500, 256 * 2**20, config, probe)
    pod["metadata"] |= {"name": name, "resourceVersion": resource_version, "creationTimestamp": "2030-01-02T02:00:00Z"}
    pod["status"] = {
        "phase": "Running",
        "startTime": "2030-01-02T02:00:00Z",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return pod


def with_pool(operator: Operator, *pods: dict[str, Any]) -> Operator:
    for pod in pods:
        operator.cluster.sandboxes.pods[NAMESPACE, pod["metadata"]["name"]] = pod
    return operator


def test_a_fitting_execution_claims_a_ready_warm_pod_and_gets_no_pod_of_its_own() -> None:
    """Seen failing with the claim missing (the cold path ran beside an idle pool)."""
    operator = with_pool(Operator(), pool_pod("py-a"))
    operator.start()
    assert creates(operator.cluster) == []
    assert operator.pods() == ["py-a"]
    claimed = operator.cluster.sandboxes.pods[NAMESPACE, "py-a"]["metadata"]
    assert claimed["labels"]["codeexec.io/execution-uid"] == factories.UID
    assert claimed["labels"]["codeexec.io/pool"] == "py"  # still fenced by the pool's deny-all NetworkPolicy
    assert [ref["kind"] for ref in claimed["ownerReferences"]] == ["Execution"]
    [(pod_name, request)] = operator.cluster.sandboxes.deliveries
    assert pod_name == "py-a"
    sent = json.loads(request)
    assert sent["code"] == operator.cluster.executions.execution["spec"]["code"]
    assert sent["fileName"] == "main.py" and sent["timeoutSeconds"] == 30


def test_a_pod_claimed_by_another_meanwhile_is_skipped_for_the_next() -> None:
    """The listing saw version 7 of py-a; the API has 8 (claimed since): 409, so py-b is claimed."""
    operator = with_pool(Operator(), pool_pod("py-a"), pool_pod("py-b"))
    operator.cluster.sandboxes.pods[NAMESPACE, "py-a"]["metadata"]["resourceVersion"] = "8"
    listed = operator.cluster.sandboxes.warm_pods
    stale = [pool_pod("py-a"), pool_pod("py-b")]
    operator.cluster.sandboxes.warm_pods = lambda namespace, template: stale  # type: ignore[method-assign]
    operator.start()
    assert [name for name, _ in operator.cluster.sandboxes.deliveries] == ["py-b"]
    assert "codeexec.io/execution-uid" not in operator.cluster.sandboxes.pods[NAMESPACE, "py-a"]["metadata"]["labels"]
    assert listed(NAMESPACE, stale[0]["metadata"]["labels"]["codeexec.io/template-hash"]) == [
        operator.cluster.sandboxes.pods[NAMESPACE, "py-a"]
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"resources": {"cpu": "250m"}},  # another size: another template
        {"network": {"allowedDomains": ["example.com"]}},  # egress beyond the pool's deny-all
        {"env": [{"name": "PYTHONPATH", "value": "/tmp"}]},  # read by the interpreter at its start
    ],
)
def test_what_a_warm_pod_cannot_honour_goes_cold(change: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        resolver, "resolve_all", lambda hosts: {h: resolver.Resolution(("93.184.215.14",)) for h in hosts}
    )
    operator = with_pool(Operator(), pool_pod("py-a"))
    operator.cluster.executions.execution["spec"] |= change
    operator.start()
    assert operator.cluster.sandboxes.deliveries == []
    assert creates(operator.cluster) == ["create_configmap", "create_networkpolicy", "create_pod"]


def test_a_pool_pod_not_ready_yet_is_never_offered() -> None:
    operator = with_pool(Operator(), pool_pod("py-a", ready=False))
    operator.start()
    assert operator.cluster.sandboxes.deliveries == []
    assert "create_pod" in creates(operator.cluster)


def test_a_ready_warm_pod_starts_an_execution_even_when_the_node_has_no_room_left() -> None:
    """The pool's pod holds its room already. Seen failing with the Execution Queued behind a full node."""
    operator = with_pool(Operator(), pool_pod("py-a"))
    operator.cluster.facts.other_pods = [factories.pod(memory_limit="4Gi")]  # fills the node's memory
    operator.cluster.facts.other_pods[0]["spec"]["nodeName"] = "node-1"
    operator.start()
    assert [name for name, _ in operator.cluster.sandboxes.deliveries] == ["py-a"]


def test_a_claimed_pod_found_unrecorded_after_a_restart_gets_the_request_again_and_no_second_pod() -> None:
    """A restart between the claim and the delivery: the next launch finds the pod by the Execution's uid."""
    operator = with_pool(Operator(), pool_pod("py-a"), pool_pod("py-b"))
    claimed = operator.cluster.sandboxes.pods[NAMESPACE, "py-a"]
    claimed["metadata"]["labels"]["codeexec.io/execution-uid"] = factories.UID
    claimed["metadata"]["annotations"] = {"codeexec.io/claimed-at": "2030-01-02T03:00:00Z"}
    operator.cluster.executions.execution["status"] = {"phase": "Pending"}
    operator.start()
    assert [name for name, _ in operator.cluster.sandboxes.deliveries] == ["py-a"]
    assert creates(operator.cluster) == [] and "codeexec.io/execution-uid" not in pool_labels(operator, "py-b")
    assert operator.status()["podName"] == "py-a"


def pool_labels(operator: Operator, name: str) -> dict[str, str]:
    labels: dict[str, str] = operator.cluster.sandboxes.pods[NAMESPACE, name]["metadata"]["labels"]
    return labels


def test_a_queued_execution_takes_a_pool_pod_that_becomes_ready_though_the_node_stays_full() -> None:
    """Seen failing (e2e, a burst against a pool on a full node) with every Execution after the first
    Queued behind the capacity the pool's own pods hold."""
    operator = with_pool(Operator(), pool_pod("py-a", ready=False))
    operator.cluster.facts.other_pods = [factories.pod(memory_limit="4Gi")]
    operator.cluster.facts.other_pods[0]["spec"]["nodeName"] = "node-1"
    operator.start()
    assert operator.status()["reason"] == "Queued" and operator.cluster.sandboxes.deliveries == []
    operator.cluster.sandboxes.pods[NAMESPACE, "py-a"]["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    operator.tick()
    assert [name for name, _ in operator.cluster.sandboxes.deliveries] == ["py-a"]


def test_a_pool_pod_that_is_no_longer_ready_clears_its_index_entry() -> None:
    """Kopf keeps an object's last index entry when its handler returns None: an empty result clears it.
    Seen failing with None (a pod going away kept counting as ready)."""
    ready, stopping = pool_pod("py-a"), pool_pod("py-a", ready=False)
    assert handlers.warm_pods(body=kopf.Body(ready)) == {
        (NAMESPACE, ready["metadata"]["labels"]["codeexec.io/template-hash"]): "py-a"
    }
    assert handlers.warm_pods(body=kopf.Body(stopping)) == {}


def test_pools_reconcile_when_executions_start_and_cease_to_wait_for_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8: idle pool pods held the room a burst waited for. Fails when the pools are not told that a
    backlog began (they keep their idle pods) or ended (they stay empty), or are told at every decision."""
    monkeypatch.setattr(dispatch, "TIMER_ROUND_SECONDS", 0.0)  # every tick decides
    operator = Operator()
    idle = pool_pod("py-a")
    idle["spec"] = {"nodeName": "node-1", "containers": [{"resources": {"requests": {"cpu": "1800m"}}}]}
    operator.cluster.facts.other_pods = [idle]  # the pool's idle pod leaves 200m of the node's 2 CPUs
    operator.start()
    assert operator.status()["reason"] == "Queued" and operator.pods() == []
    assert operator.dispatcher.backlog() == 1
    assert operator.pools.reconciled == [(NAMESPACE, "py", 1)]  # the pool yields its pod
    operator.tick()
    assert operator.pools.reconciled == [(NAMESPACE, "py", 1)], "no news: no reconciliation"
    operator.cluster.facts.other_pods = []  # the pool deleted its idle pod
    operator.tick()
    assert operator.pods() == [POD_NAME]
    assert operator.pools.reconciled[1:] == [(NAMESPACE, "py", 0)]  # nothing waits: the pool refills


def test_a_queue_held_by_its_limit_leaves_the_pools_alone() -> None:
    """Emptying the pools cannot start an Execution that waits for max_running: they keep their pods."""
    operator = Operator(max_running=1)
    operator.add("first", "uid-1", phase="Running", podName="first-pod", resources={"cpu": "500m"})
    operator.start()
    assert operator.status()["reason"] == "Queued"
    assert operator.dispatcher.backlog() == 0 and operator.pools.reconciled == []


# --- Bindings ---------------------------------------------------------------------------------------------

KEY = b"binding-token-key-of-48-bytes-for-the-unit-tests"


def with_bindings(tmp_path: Path, names: list[str], granted: list[str] | None = None, **settings: Any) -> Operator:
    """An Operator with a broker and its token key, whose Execution names `names`; the namespace has SandboxBindings
    `granted` (default: those names)."""
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")
    settings = {"broker_service": BROKER_SERVICE, "binding_token_key_file": str(key_file), **settings}
    operator = Operator(**settings)
    operator.cluster.executions.execution["spec"]["bindings"] = names
    operator.cluster.facts.bindings = [sandbox_binding(name) for name in (names if granted is None else granted)]
    return operator


def test_an_execution_with_bindings_reaches_the_broker_and_nothing_more(tmp_path: Path) -> None:
    """Its namespace's SandboxBindings listed once (not once per name), the broker's Service read once, and the
    sandbox made with the token (in a Secret), the broker's egress rule and the runner's flag."""
    operator = with_pool(with_bindings(tmp_path, ["notes", "audit"]), pool_pod("py-a"))
    operator.start()
    facts = operator.cluster.facts
    assert facts.binding_listings == [NAMESPACE]
    assert facts.broker_reads == [("codeexec-system", "code-exec-broker")]
    assert operator.cluster.sandboxes.deliveries == [], "never a warm pod: its fence denies all egress"
    # The Secret before the pod, whose /code volume projects it.
    assert creates(operator.cluster) == ["create_configmap", "create_secret", "create_networkpolicy", "create_pod"]
    created = operator.cluster.sandboxes.created
    assert "bindings.json" not in created["ConfigMap"]["data"], "the token: in the Secret, which `view` cannot read"
    assert json.loads(created["Secret"]["stringData"]["bindings.json"]) == {
        "url": "http://10.96.0.57:8080",
        "token": bindingtoken.mint(KEY, NAMESPACE, NAME, factories.UID),
        "execution": f"{NAMESPACE}/{NAME}",
        "bindings": {"notes": "db", "audit": "db"},
    }
    broker_rule = {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "codeexec-system"}},
                "podSelector": {
                    "matchLabels": {"app.kubernetes.io/instance": "code-exec", "app.kubernetes.io/component": "broker"}
                },
            }
        ],
        "ports": [{"protocol": "TCP", "port": 8080}],
    }
    assert created["NetworkPolicy"]["spec"]["egress"] == [broker_rule]
    assert created["NetworkPolicy"]["spec"]["ingress"] == []
    args = created["Pod"]["spec"]["containers"][0]["args"]
    assert args[args.index("--bindings-file") + 1] == "/code/bindings.json"


def test_an_ai_binding_reaches_the_sandbox_as_its_type(tmp_path: Path) -> None:
    operator = with_bindings(tmp_path, ["notes", "llm"], granted=["notes"])
    ai = {"endpoint": "http://llm.models.svc:8080/v1", "models": ["tiny"]}
    operator.cluster.facts.bindings.append({**sandbox_binding("llm"), "spec": {"ai": ai}})
    operator.start()
    delivered = json.loads(operator.cluster.sandboxes.created["Secret"]["stringData"]["bindings.json"])
    assert delivered["bindings"] == {"notes": "db", "llm": "ai"}


def test_an_execution_without_bindings_lists_none_and_never_reads_the_broker(tmp_path: Path) -> None:
    operator = with_bindings(tmp_path, [])
    operator.start()
    assert operator.cluster.facts.binding_listings == [] and operator.cluster.facts.broker_reads == []
    assert "bindings.json" not in operator.cluster.sandboxes.created["ConfigMap"]["data"]
    assert "Secret" not in operator.cluster.sandboxes.created
    assert operator.cluster.sandboxes.created["NetworkPolicy"]["spec"]["egress"] == []


def test_a_binding_the_namespace_lacks_is_rejected_by_name(tmp_path: Path) -> None:
    operator = with_bindings(tmp_path, ["notes", "gone"], granted=["notes"])
    operator.start()
    current = operator.status()
    assert (current["phase"], current["reason"]) == ("Rejected", "BindingNotFound")
    assert '"gone"' in current["message"]
    assert operator.pods() == [] and operator.cluster.facts.broker_reads == []


def test_bindings_without_a_broker_are_rejected_without_a_listing(tmp_path: Path) -> None:
    operator = with_bindings(tmp_path, ["notes"], broker_service="")
    operator.start()
    assert (operator.status()["phase"], operator.status()["reason"]) == ("Rejected", "BindingsUnavailable")
    assert operator.cluster.facts.binding_listings == []


@pytest.mark.parametrize(
    ("broker", "words"),
    [
        (None, "does not exist"),
        ({"spec": {"clusterIP": "None", "ports": [{"port": 8080}], "selector": {"a": "b"}}}, "no cluster IP"),
        (
            {
                "spec": {
                    "clusterIP": "10.96.0.57",
                    "ports": [{"port": 8080, "targetPort": "api"}],
                    "selector": {"a": "b"},
                }
            },
            "must be a number",
        ),
    ],
)
def test_a_broker_the_sandbox_cannot_reach_rejects_the_execution(
    tmp_path: Path, broker: dict[str, Any] | None, words: str
) -> None:
    operator = with_bindings(tmp_path, ["notes"])
    operator.cluster.facts.broker = broker
    operator.start()
    current = operator.status()
    assert (current["phase"], current["reason"]) == ("Rejected", "BindingsUnavailable")
    assert words in current["message"]
    assert creates(operator.cluster) == []


def test_an_unreadable_token_key_rejects_only_executions_with_bindings(tmp_path: Path) -> None:
    operator = with_bindings(tmp_path, ["notes"], binding_token_key_file=str(tmp_path / "absent"))
    operator.start()
    assert (operator.status()["phase"], operator.status()["reason"]) == ("Rejected", "BindingsUnavailable")
    assert "binding token key" in operator.status()["message"]
    assert operator.cluster.facts.broker_reads == [], "the key first: no API call for a launch that cannot be"


def test_status_writes_leave_the_brokers_usage_alone(tmp_path: Path) -> None:
    """status.bindings is the broker's: no status patch of the operator names it, so a merge patch keeps it
    (seen failing with a status write that sent the whole current status back)."""
    operator = with_bindings(tmp_path, ["notes"])
    usage = [{"name": "notes", "type": "db", "calls": 3, "errors": 0, "refused": 0, "rowsRead": 2, "rowsWritten": 1}]
    operator.cluster.executions.execution["status"] = {"bindings": usage}
    operator.start()
    pod = owned_pod(phase="Running", state={"running": {"startedAt": factories.timestamp(factories.NOW)}})
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": "codeexec.io/v1alpha1", "kind": "Execution", "name": NAME, "uid": factories.UID}
    ]
    kwargs = operator.indexes()
    handlers.pod_event(event={"type": "MODIFIED"}, body=kopf.Body(pod), memo=operator.memo, logger=LOGGER, **kwargs)
    operator.finish()
    patches = operator.cluster.executions.patches
    assert [patch.get("phase") for patch in patches if "phase" in patch] == ["Pending", "Running", "Succeeded"]
    assert not [patch for patch in patches if "bindings" in patch]
    assert operator.status()["bindings"] == usage
