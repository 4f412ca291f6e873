"""Warm pools: the pool's target from its spec, the plan from its pods, its status, and one reconciliation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from codeexec import builders, warmpools
from codeexec.api import ApiError
from codeexec.config import OperatorConfig
from codeexec.validation import Plan
from codeexec.warmpools import IdlePod, PoolKeeper, PoolPlan, Target
from tests.unit import factories
from tests.unit.factories import NOW, RUNTIMES, plan, timestamp
from tests.unit.fakes import FakeClusterFacts, FakeWarmPools

PROBE = "10.0.0.1:443"  # fakes.API_SERVICE's
POOL_UID = "11111111-2222-4333-8444-555555555555"
CONFIG = OperatorConfig()


def target(config: OperatorConfig = CONFIG, class_exists: bool = True, **spec: Any) -> Target:
    return warmpools.target({"runtime": "python", "replicas": 2, **spec}, RUNTIMES, config, class_exists, PROBE)


def idle(name: str, *, ready: bool = True, template: str | None = "h1", ended: bool = False, age: int = 10) -> IdlePod:
    created = timestamp(NOW - timedelta(seconds=age))
    return IdlePod(name, f"rv-{name}", template, ended, ready, created)


def test_a_plain_pool_has_the_size_of_a_plain_execution() -> None:
    """The pool's pods fit an Execution without resources: the same defaulting, the same hash the claim computes."""
    goal = target()
    assert goal.desired == 2 and goal.problem is None and goal.template is not None
    execution: Plan = plan(CONFIG)
    assert (goal.template.cpu_millis, goal.template.memory_bytes) == (execution.cpu_millis, execution.memory_bytes)
    claim_hash = builders.warm_template_hash(
        execution.runtime, execution.cpu_millis, execution.memory_bytes, CONFIG, PROBE
    )
    assert goal.template.hash == claim_hash
    sized = target(resources={"cpu": "250m", "memory": "128Mi"})
    assert sized.template is not None and sized.template.hash != claim_hash
    assert sized.template.hash == builders.warm_template_hash(execution.runtime, 250, 128 * 1024**2, CONFIG, PROBE)


def test_an_alias_names_the_runtime() -> None:
    assert target(runtime="py").template == target().template


@pytest.mark.parametrize(
    ("spec", "reason", "words"),
    [
        ({"runtime": "cobol"}, "UnknownRuntime", 'spec.runtime "cobol" is not an installed Runtime'),
        ({"resources": {"cpu": "3"}}, "ResourcesTooLarge", "spec.resources.cpu 3 exceeds the maximum 2"),
        ({"resources": {"memory": "1Mi"}}, "InvalidSpec", "below the minimum"),
        ({"replicas": -1}, "InvalidSpec", "greater than or equal to 0"),
    ],
)
def test_a_pool_that_cannot_be_filled_holds_nothing(spec: dict[str, Any], reason: str, words: str) -> None:
    goal = target(**spec)
    assert (goal.desired, goal.template) == (0, None)
    assert goal.problem is not None and goal.problem[0] == reason and words in goal.problem[1], goal.problem


def test_no_pool_pod_without_the_runtime_class() -> None:
    goal = target(class_exists=False)
    assert (goal.desired, goal.template) == (0, None)
    assert goal.problem is not None and goal.problem[0] == "RuntimeClassMissing"
    assert target(OperatorConfig(runtime_class=""), class_exists=False).desired == 2


def test_replicas_are_capped_by_the_operator() -> None:
    goal = target(OperatorConfig(max_warm_pool_replicas=3), replicas=5)
    assert goal.desired == 3 and goal.template is not None
    assert goal.problem == (
        "ReplicasTooLarge",
        "spec.replicas 5 exceeds the operator's maximum 3; the pool keeps 3",
    )


def test_plan_fills_up_to_the_desired_count() -> None:
    assert warmpools.plan(3, "h1", [idle("a")]) == PoolPlan(create=2, delete=(), kept=1, ready=1)
    assert warmpools.plan(2, "h1", [idle("a"), idle("b", ready=False)]) == PoolPlan(0, (), 2, 1)
    assert warmpools.plan(0, "h1", []) == PoolPlan(0, (), 0, 0)


def test_plan_replaces_ended_pods_and_rolls_stale_ones() -> None:
    """Fails when an ended pod counts as idle (the pool would stay short for good) or a pod of an older template
    stays (a Runtime's new image would never reach the pool)."""
    pods = [idle("ended", ended=True), idle("old", template="h0"), idle("unlabelled", template=None), idle("ok")]
    steps = warmpools.plan(2, "h1", pods)
    assert steps.delete == (("ended", "rv-ended"), ("old", "rv-old"), ("unlabelled", "rv-unlabelled"))
    assert (steps.create, steps.kept, steps.ready) == (1, 1, 1)


def test_a_pool_without_template_deletes_every_idle_pod() -> None:
    steps = warmpools.plan(0, None, [idle("a"), idle("b", template=None)])
    assert steps == PoolPlan(0, (("a", "rv-a"), ("b", "rv-b")), 0, 0)


def test_scale_down_deletes_pods_not_ready_first_then_the_newest() -> None:
    pods = [idle("old", age=30), idle("new", age=5), idle("starting", ready=False, age=20), idle("mid", age=10)]
    assert warmpools.plan(3, "h1", pods).delete == (("starting", "rv-starting"),)
    assert warmpools.plan(1, "h1", pods).delete == (("mid", "rv-mid"), ("new", "rv-new"), ("starting", "rv-starting"))
    assert warmpools.plan(1, "h1", pods).ready == 1


def pool_pod(name: str, **fields: Any) -> dict[str, Any]:
    """A pool pod as listed: Running and Ready unless `fields` say otherwise."""
    labels = {"codeexec.io/pool": "pool", "codeexec.io/template-hash": "h1", **fields.pop("labels", {})}
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "team",
        "resourceVersion": "7",
        "creationTimestamp": timestamp(NOW),
        "labels": labels,
        "ownerReferences": fields.pop(
            "owners", [{"apiVersion": "codeexec.io/v1alpha1", "kind": "WarmPool", "name": "pool", "uid": POOL_UID}]
        ),
        **fields.pop("metadata", {}),
    }
    status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}], **fields.pop("status", {})}
    return {"metadata": metadata, "status": status}


def test_idle_pods_are_the_pools_own_unclaimed_live_pods() -> None:
    """Fails when a claimed pod (the Execution's uid label) counts as idle: the pool would delete or count a pod
    that serves an Execution."""
    pods = [
        pool_pod("idle"),
        pool_pod("claimed", labels={"codeexec.io/execution-uid": "u"}),
        pool_pod("deleting", metadata={"deletionTimestamp": timestamp(NOW)}),
        pool_pod("namesake", owners=[{"kind": "WarmPool", "uid": "another"}]),
        pool_pod("starting", status={"conditions": [{"type": "Ready", "status": "False"}]}),
        pool_pod("failed", status={"phase": "Failed", "conditions": []}),
    ]
    found = {pod.name: pod for pod in warmpools.idle_pods(pods, POOL_UID)}
    assert sorted(found) == ["failed", "idle", "starting"]
    assert (found["idle"].ready, found["idle"].ended, found["idle"].resource_version) == (True, False, "7")
    assert (found["starting"].ready, found["failed"].ended) == (False, True)


def test_status_says_filling_until_ready_then_ready() -> None:
    goal = target()
    filling = warmpools.status_patch({}, goal, 2, 1, None, 3, NOW)
    assert filling == {
        "replicas": 2,
        "readyReplicas": 1,
        "observedGeneration": 3,
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "Filling",
                "message": "1 of 2 ready",
                "lastTransitionTime": timestamp(NOW),
                "observedGeneration": 3,
            }
        ],
    }
    later = NOW + timedelta(seconds=5)
    assert warmpools.status_patch(filling, goal, 2, 1, None, 3, later) is None  # nothing changed: no write
    ready = warmpools.status_patch(filling, goal, 2, 2, None, 3, later)
    assert ready is not None
    assert ready["conditions"][0] | {"lastTransitionTime": None} == {
        "type": "Ready",
        "status": "True",
        "reason": "Ready",
        "message": "2 of 2 ready",
        "lastTransitionTime": None,
        "observedGeneration": 3,
    }
    assert ready["conditions"][0]["lastTransitionTime"] == timestamp(later)


def test_filling_says_why_a_pod_waits() -> None:
    """Fails when a pool short of room (or of its image) only says "Filling" with no cause."""
    unschedulable = pool_pod(
        "starting",
        status={
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "message": "0/1 nodes are available: 1 Insufficient cpu."}
            ],
        },
    )
    image = pool_pod(
        "pulling",
        status={
            "phase": "Pending",
            "conditions": [],
            "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}],
        },
    )
    creating = pool_pod(
        "creating",
        status={
            "phase": "Pending",
            "conditions": [],
            "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}],
        },
    )
    idle_now = warmpools.idle_pods([unschedulable, image, creating, pool_pod("ok")], POOL_UID)
    assert {pod.name: pod.waiting for pod in idle_now} == {
        "starting": "0/1 nodes are available: 1 Insufficient cpu.",
        "pulling": "ErrImagePull: not found",
        "creating": "",
        "ok": "",
    }
    steps = warmpools.plan(4, "h1", idle_now)
    assert steps.waiting in (
        "starting: 0/1 nodes are available: 1 Insufficient cpu.",
        "pulling: ErrImagePull: not found",
    )
    patch = warmpools.status_patch({}, target(replicas=4), 4, 1, None, 1, NOW, "starting: no room")
    assert patch is not None and patch["conditions"][0]["message"] == "1 of 4 ready; starting: no room"


def test_status_names_the_problem() -> None:
    patch = warmpools.status_patch({}, target(runtime="cobol"), 0, 0, None, 1, NOW)
    assert patch is not None and patch["conditions"][0]["reason"] == "UnknownRuntime"
    refused = warmpools.status_patch({}, target(), 0, 0, "403 Forbidden: exceeded quota", 1, NOW)
    assert refused is not None
    assert (refused["conditions"][0]["reason"], refused["conditions"][0]["message"]) == (
        "CreateRefused",
        "403 Forbidden: exceeded quota",
    )
    capped = warmpools.status_patch(
        {}, target(OperatorConfig(max_warm_pool_replicas=1), replicas=2), 1, 1, None, 1, NOW
    )
    assert capped is not None and capped["conditions"][0]["reason"] == "ReplicasTooLarge"


def test_status_says_the_pool_yields_to_a_queue_backlog() -> None:
    """Fails when a pool emptied for the queue looks merely short ("Filling") or healthy."""
    patch = warmpools.status_patch({}, target(), 0, 0, None, 1, NOW, "", 3)
    assert patch is not None and (patch["replicas"], patch["readyReplicas"]) == (0, 0)
    condition = patch["conditions"][0]
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "False",
        "QueueBacklog",
        warmpools.BACKLOG_MESSAGE,
    )
    # A pool that cannot hold pods says why, backlog or not; one of zero replicas has nothing to yield.
    unknown = warmpools.status_patch({}, target(runtime="cobol"), 0, 0, None, 1, NOW, "", 3)
    assert unknown is not None and unknown["conditions"][0]["reason"] == "UnknownRuntime"
    empty = warmpools.status_patch({}, target(replicas=0), 0, 0, None, 1, NOW, "", 3)
    assert empty is not None and empty["conditions"][0]["reason"] == "Ready"


def test_pool_of_a_pod_is_its_owner_or_its_label() -> None:
    assert warmpools.pool_of(pool_pod("a")) == ("team", "pool")
    # A claimed pod is owned by its Execution: the label still names the pool to refill.
    claimed = pool_pod("a", owners=[{"apiVersion": "codeexec.io/v1alpha1", "kind": "Execution", "name": "x"}])
    assert warmpools.pool_of(claimed) == ("team", "pool")
    assert warmpools.pool_of({"metadata": {"namespace": "team", "labels": {}}}) is None


def the_pool(replicas: int = 2, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "WarmPool",
        "metadata": {"namespace": "team", "name": "pool", "uid": POOL_UID, "generation": 1},
        "spec": {"runtime": "python", "replicas": replicas, **spec},
    }


class Retries:
    """PoolKeeper's schedule: records the retries instead of running them after a delay."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, function: Callable[[], None]) -> None:
        self.pending.append((delay, function))

    def run(self) -> None:
        pending, self.pending = self.pending, []
        for _, function in pending:
            function()


class Backlog:
    """The Dispatcher's backlog as PoolKeeper reads it: how many queued Executions wait for room (`count`)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


def keeper(
    pool: dict[str, Any], retries: Retries | None = None, backlog: Backlog | None = None
) -> tuple[PoolKeeper, FakeWarmPools, list[str]]:
    calls: list[str] = []
    pools = FakeWarmPools(calls, pool)
    facts = FakeClusterFacts([factories_runtime()], None)
    return PoolKeeper(pools, facts, CONFIG, backlog or Backlog(), retries or Retries()), pools, calls


def factories_runtime() -> dict[str, Any]:
    return {"metadata": {"name": "python"}, "spec": factories.PYTHON.model_dump(by_alias=True, exclude_none=True)}


def mark_ready(pools: FakeWarmPools) -> None:
    for pod in pools.pods.values():
        pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        pod["metadata"]["resourceVersion"] = "2"


def test_reconcile_fences_the_namespace_first_then_fills_and_reports() -> None:
    """Fails when a pod is created before the deny-all NetworkPolicy exists (it could run unfenced)."""
    pool_keeper, pools, calls = keeper(the_pool())
    pool_keeper.reconcile("team", "pool")
    assert calls == [
        "read_pool",
        "list_pool_pods",
        "ensure_networkpolicy",
        "create_pool_pod",
        "create_pool_pod",
        "patch_pool_status",
    ]
    assert pools.policies == [builders.warm_networkpolicy("team")]
    assert len(pools.pods) == 2
    assert all(pod["metadata"]["generateName"] == "pool-" for pod in pools.pods.values())
    assert pools.pool is not None
    assert (pools.pool["status"]["replicas"], pools.pool["status"]["readyReplicas"]) == (2, 0)
    assert pools.pool["status"]["conditions"][0]["reason"] == "Filling"

    calls.clear()
    pool_keeper.reconcile("team", "pool")
    assert calls == ["read_pool", "list_pool_pods"]  # nothing to do, nothing changed: no write
    mark_ready(pools)
    pool_keeper.reconcile("team", "pool")
    assert pools.pool["status"]["conditions"][0]["reason"] == "Ready"


def test_reconcile_refills_after_a_claim_and_never_deletes_a_claimed_pod() -> None:
    pool_keeper, pools, _ = keeper(the_pool())
    pool_keeper.reconcile("team", "pool")
    mark_ready(pools)
    claimed = next(iter(pools.pods.values()))
    claimed["metadata"]["labels"]["codeexec.io/execution-uid"] = factories.UID
    pool_keeper.reconcile("team", "pool")
    assert len(pools.pods) == 3 and claimed["metadata"]["name"] in pools.pods
    # Scaled to zero: only idle pods go.
    pools.pool["spec"]["replicas"] = 0  # type: ignore[index]
    pool_keeper.reconcile("team", "pool")
    assert list(pools.pods) == [claimed["metadata"]["name"]]


def test_a_pod_claimed_between_list_and_delete_survives() -> None:
    """The delete carries the version listed: a claim's patch in between changes it, and the pod stays."""
    pool_keeper, pools, _ = keeper(the_pool(replicas=1))
    pool_keeper.reconcile("team", "pool")
    (name,) = pools.pods
    real_list = pools.list_pods

    def list_then_claim(namespace: str, selector: str) -> list[dict[str, Any]]:
        listed = [dict(pod, metadata=dict(pod["metadata"])) for pod in real_list(namespace, selector)]
        pools.pods[name]["metadata"]["resourceVersion"] = "claimed"  # the claim's patch lands after the listing
        return listed

    pools.list_pods = list_then_claim  # type: ignore[method-assign]
    pools.pool["spec"]["replicas"] = 0  # type: ignore[index]
    pool_keeper.reconcile("team", "pool")
    assert name in pools.pods


def test_a_refused_pod_is_reported_and_tried_again_later() -> None:
    pool_keeper, pools, calls = keeper(the_pool(replicas=3))
    pools.refusal = ApiError('403 Forbidden: pods "pool-x" is forbidden: exceeded quota: q', 403)
    pool_keeper.reconcile("team", "pool")  # no exception: the timer tries again
    assert calls.count("create_pool_pod") == 1  # the next would be refused too
    assert pools.pool is not None
    condition = pools.pool["status"]["conditions"][0]
    assert condition["reason"] == "CreateRefused"
    assert "500m CPU, 256Mi memory" in condition["message"] and "exceeded quota" in condition["message"]
    pools.refusal = None
    pool_keeper.reconcile("team", "pool")
    assert len(pools.pods) == 3
    assert pools.pool["status"]["conditions"][0]["reason"] == "Filling"


def test_a_server_error_is_raised_for_kopf_to_retry() -> None:
    pool_keeper, pools, _ = keeper(the_pool())
    pools.refusal = ApiError("503 Service Unavailable", 503)
    with pytest.raises(ApiError):
        pool_keeper.reconcile("team", "pool")


def test_a_deleted_pool_is_left_to_garbage_collection() -> None:
    pool_keeper, pools, calls = keeper(the_pool())
    pools.pool = None
    pool_keeper.reconcile("team", "pool")
    assert calls == ["read_pool"]


def test_a_pool_short_of_pods_is_retried_until_it_holds_them() -> None:
    """The retry Kopf's timer would make, without its finalizer: fails when a refused or starting pool is left
    until some event happens to come (a quota that grew sends none)."""
    retries = Retries()
    pool_keeper, pools, _ = keeper(the_pool(), retries)
    pools.refusal = ApiError("403 Forbidden: exceeded quota: q", 403)
    pool_keeper.reconcile("team", "pool")
    pool_keeper.reconcile("team", "pool")  # a pod event meanwhile: still one retry pending, not two
    assert [delay for delay, _ in retries.pending] == [warmpools.RETRY_SECONDS]
    pools.refusal = None
    retries.run()
    assert len(pools.pods) == 2
    assert len(retries.pending) == 1  # created, not ready yet: look again
    mark_ready(pools)
    retries.run()
    assert retries.pending == []  # holds all it can: no more retries
    assert pools.pool is not None and pools.pool["status"]["conditions"][0]["reason"] == "Ready"


def test_an_api_error_is_retried_too() -> None:
    retries = Retries()
    pool_keeper, pools, _ = keeper(the_pool(), retries)
    pools.refusal = ApiError("503 Service Unavailable", 503)
    with pytest.raises(ApiError):
        pool_keeper.reconcile("team", "pool")
    pools.refusal = None
    retries.run()
    assert len(pools.pods) == 2


def test_metrics_follow_the_pool_and_go_with_it() -> None:
    def gauge(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"namespace": "team", "pool": "pool"})

    pool_keeper, pools, _ = keeper(the_pool())
    pool_keeper.reconcile("team", "pool")
    assert (gauge("codeexec_warm_pool_desired"), gauge("codeexec_warm_pool_ready")) == (2, 0)
    mark_ready(pools)
    pool_keeper.reconcile("team", "pool")
    assert gauge("codeexec_warm_pool_ready") == 2
    pools.pool = None
    pool_keeper.reconcile("team", "pool")
    assert (gauge("codeexec_warm_pool_desired"), gauge("codeexec_warm_pool_ready")) == (None, None)


def test_under_a_queue_backlog_the_pool_deletes_its_idle_pods_creates_none_and_refills_after() -> None:
    """Issue 8: idle pool pods held the room a burst of queued Executions waited for. Fails when a pool keeps
    (or refills) idle pods while Executions wait for room, touches a claimed pod, or stays empty after."""
    backlog, retries = Backlog(), Retries()
    pool_keeper, pools, calls = keeper(the_pool(), retries, backlog)
    pool_keeper.reconcile("team", "pool")
    mark_ready(pools)
    claimed, _ = pools.pods.values()
    claimed["metadata"]["labels"]["codeexec.io/execution-uid"] = factories.UID
    backlog.count = 4
    calls.clear()
    pool_keeper.reconcile("team", "pool")
    assert "create_pool_pod" not in calls
    assert list(pools.pods) == [claimed["metadata"]["name"]], "the idle pod goes, the claimed one stays"
    assert pools.pool is not None
    condition = pools.pool["status"]["conditions"][0]
    assert (condition["reason"], condition["message"]) == (
        "QueueBacklog",
        warmpools.BACKLOG_MESSAGE,
    )
    assert pools.pool["status"]["replicas"] == 0
    retries.run()  # the deletes' retry finds nothing to do: no more retries while the pool yields
    assert retries.pending == [] and list(pools.pods) == [claimed["metadata"]["name"]]

    backlog.count = 0
    pool_keeper.reconcile("team", "pool")
    assert len(pools.pods) == 3 and claimed["metadata"]["name"] in pools.pods
    assert pools.pool["status"]["conditions"][0]["reason"] == "Filling"


def test_a_pod_claimed_while_the_pool_yields_survives() -> None:
    """The yielding delete carries the version listed, like any: a claim in between keeps the pod."""
    backlog = Backlog()
    pool_keeper, pools, _ = keeper(the_pool(replicas=1), backlog=backlog)
    pool_keeper.reconcile("team", "pool")
    (name,) = pools.pods
    real_list = pools.list_pods

    def list_then_claim(namespace: str, selector: str) -> list[dict[str, Any]]:
        listed = [dict(pod, metadata=dict(pod["metadata"])) for pod in real_list(namespace, selector)]
        pools.pods[name]["metadata"]["resourceVersion"] = "claimed"
        return listed

    pools.list_pods = list_then_claim  # type: ignore[method-assign]
    backlog.count = 1
    pool_keeper.reconcile("team", "pool")
    assert name in pools.pods
