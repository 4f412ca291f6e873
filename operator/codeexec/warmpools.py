"""Warm pools: what a WarmPool should hold and what to do about its idle pods (pure), and doing it (reconcile)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from codeexec import builders, metrics, status
from codeexec.api import ApiError, Body, ClusterFacts, WarmPools
from codeexec.builders import PoolRef
from codeexec.config import OperatorConfig
from codeexec.egress import isolation_probe
from codeexec.models import GROUP, VERSION, RuntimeSpec, WarmPoolSpec
from codeexec.validation import Rejection, find_runtime, format_cpu, format_memory, parse_runtimes, resolve_resources
from codeexec.vocabulary import (
    CONDITION_READY,
    EXECUTION_UID_LABEL,
    INVALID_SPEC,
    POOL_CREATE_REFUSED,
    POOL_FILLING,
    POOL_LABEL,
    POOL_QUEUE_BACKLOG,
    POOL_READY,
    REPLICAS_TOO_LARGE,
    RUNTIME_CLASS_MISSING,
    TEMPLATE_HASH_LABEL,
    UNKNOWN_RUNTIME,
)

# Pod phases after which a pod never runs again: an idle pod there is replaced.
ENDED_PHASES = ("Succeeded", "Failed")
# A pool short of what it could hold is reconciled again after this (PoolKeeper), besides its pods' events.
RETRY_SECONDS = 10.0
log = logging.getLogger(__name__)
# Runs a function once after a delay, off the caller's thread.
Schedule = Callable[[float, Callable[[], None]], None]
BACKLOG_MESSAGE = "Executions wait in the queue for room on the nodes; idle pods yield to them"
# How many queued Executions wait only for room on the nodes (dispatch.Dispatcher.backlog).
Backlog = Callable[[], int]

# API statuses of a pod create that trying again at once cannot fix (a quota or LimitRange, as in
# queueing.is_quota_refusal; the namespace's Pod Security admission; a missing default ServiceAccount): the
# pool says why in its condition and tries again after RETRY_SECONDS.
REFUSED_CREATE_STATUSES = (400, 403, 422)


@dataclass(frozen=True)
class Template:
    """The pods a pool should hold: its Runtime and size, as validation resolves them, and their hash."""

    runtime: RuntimeSpec
    cpu_millis: int
    memory_bytes: int
    hash: str


@dataclass(frozen=True)
class Target:
    """What a pool should hold: `desired` pods of `template` (None: the pool cannot hold any); `problem`
    (reason, message) says why it holds fewer than spec.replicas."""

    desired: int
    template: Template | None
    problem: tuple[str, str] | None = None


@dataclass(frozen=True)
class IdlePod:
    """An idle pod of the pool, as listed: its name, resourceVersion (the delete's precondition) and state."""

    name: str
    resource_version: str
    template_hash: str | None
    ended: bool
    ready: bool
    created: str
    waiting: str = ""  # why it is not running yet, if the scheduler or the kubelet says


@dataclass(frozen=True)
class PoolPlan:
    """One reconciliation's steps: pods to create, idle pods to delete (name, resourceVersion), and what the
    pool then holds (idle pods of its template that stay, and how many of them are ready)."""

    create: int
    delete: tuple[tuple[str, str], ...]
    kept: int
    ready: int
    waiting: str = ""  # why a kept pod is not ready yet (the first that says), e.g. no room on any node


def target(
    raw_spec: Mapping[str, Any],
    runtimes: Mapping[str, RuntimeSpec],
    config: OperatorConfig,
    runtime_class_exists: bool,
    probe: str,
) -> Target:
    """The pool's spec checked as an Execution's would be: the Runtime it names, its resources defaulted and
    bounded alike (so a plain Execution fits a plain pool), the RuntimeClass; replicas capped by the operator."""
    try:
        spec = WarmPoolSpec.model_validate(dict(raw_spec))
    except ValidationError as error:
        return Target(0, None, (INVALID_SPEC, f"spec: {error.errors()[0]['msg']}"))
    found = find_runtime(spec.runtime, runtimes)
    if found is None:
        installed = ", ".join(sorted(runtimes)) or "none"
        message = f'spec.runtime "{spec.runtime}" is not an installed Runtime or alias (installed: {installed})'
        return Target(0, None, (UNKNOWN_RUNTIME, message))
    runtime_name, runtime = found
    resources = resolve_resources(spec.resources, runtime_name, runtime, config)
    if isinstance(resources, Rejection):
        return Target(0, None, (resources.reason, resources.message))
    if config.runtime_class and not runtime_class_exists:
        message = f'RuntimeClass "{config.runtime_class}" does not exist; the operator runs no sandbox without it'
        return Target(0, None, (RUNTIME_CLASS_MISSING, message))
    cpu, memory = resources
    template = Template(runtime, cpu, memory, builders.warm_template_hash(runtime, cpu, memory, config, probe))
    if spec.replicas > config.max_warm_pool_replicas:
        maximum = config.max_warm_pool_replicas
        message = f"spec.replicas {spec.replicas} exceeds the operator's maximum {maximum}; the pool keeps {maximum}"
        return Target(maximum, template, (REPLICAS_TOO_LARGE, message))
    return Target(spec.replicas, template, None)


def idle_pods(pods: Iterable[Mapping[str, Any]], pool_uid: str) -> list[IdlePod]:
    """The pool's idle pods: owned by this pool (not a former namesake), not claimed (no Execution's uid
    label: the claim adds it), not being deleted."""
    idle = []
    for pod in pods:
        metadata = pod["metadata"]
        labels = metadata.get("labels") or {}
        owners = metadata.get("ownerReferences") or []
        owned = any(owner.get("kind") == "WarmPool" and owner.get("uid") == pool_uid for owner in owners)
        if not owned or EXECUTION_UID_LABEL in labels or metadata.get("deletionTimestamp"):
            continue
        pod_status = pod.get("status", {})
        idle.append(
            IdlePod(
                name=metadata["name"],
                resource_version=metadata["resourceVersion"],
                template_hash=labels.get(TEMPLATE_HASH_LABEL),
                ended=pod_status.get("phase") in ENDED_PHASES,
                ready=_ready(pod_status),
                created=metadata.get("creationTimestamp", ""),
                waiting=_waiting(pod_status),
            )
        )
    return idle


def plan(desired: int, template_hash: str | None, idle: Sequence[IdlePod]) -> PoolPlan:
    """Deletes idle pods that ended or are of another template (a Runtime's new image: the pool rolls; no
    template: the pool holds nothing), then the surplus (not ready first, then the newest); creates the rest."""
    current = [pod for pod in idle if not pod.ended and pod.template_hash == template_hash]
    # Ready before not ready, older before newer: the pods kept are those closest to (or longest) serving.
    current.sort(key=lambda pod: (not pod.ready, pod.created, pod.name))
    kept, surplus = current[:desired], current[desired:]
    delete = [pod for pod in idle if pod not in current] + surplus
    return PoolPlan(
        create=desired - len(kept),
        delete=tuple((pod.name, pod.resource_version) for pod in delete),
        kept=len(kept),
        ready=sum(pod.ready for pod in kept),
        waiting=next((f"{pod.name}: {pod.waiting}" for pod in kept if pod.waiting and not pod.ready), ""),
    )


def status_patch(
    current: Mapping[str, Any],
    goal: Target,
    replicas: int,
    ready: int,
    refused: str | None,
    generation: int,
    now: datetime,
    waiting: str = "",
    backlog: int = 0,
) -> dict[str, Any] | None:
    """The pool's new status; None when nothing in it would change (no write, no watch event for anyone).
    `waiting`: why a pod is not ready yet, added to a Filling condition's message; `backlog`: how many queued
    Executions wait for room, which the pool's idle pods yield to them."""
    condition_status, reason, message = _ready_condition(goal, ready, refused, backlog)
    if reason == POOL_FILLING and waiting:
        message = f"{message}; {waiting}"
    conditions: list[Mapping[str, Any]] = current.get("conditions") or []
    previous = next((c for c in conditions if c.get("type") == CONDITION_READY), {})
    transition = status.rfc3339(now)
    if previous.get("status") == condition_status:
        transition = previous.get("lastTransitionTime", transition)  # moves only when the status does
    condition = {
        "type": CONDITION_READY,
        "status": condition_status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
        "observedGeneration": generation,
    }
    patch = {"replicas": replicas, "readyReplicas": ready, "conditions": [condition], "observedGeneration": generation}
    unchanged = all(current.get(key) == value for key, value in patch.items() if key != "conditions")
    return None if unchanged and previous == condition else patch


def _ready_condition(goal: Target, ready: int, refused: str | None, backlog: int) -> tuple[str, str, str]:
    if goal.template is None and goal.problem is not None:
        return "False", *goal.problem
    if backlog and goal.desired:
        # No count: the status is written when the pool reconciles, not at every queue decision, so a
        # count would go stale at once (the queue's own figures: the Executions' queuePosition).
        return "False", POOL_QUEUE_BACKLOG, BACKLOG_MESSAGE
    if refused is not None:
        return "False", POOL_CREATE_REFUSED, refused
    if goal.problem is not None:
        return "False", *goal.problem
    counted = f"{ready} of {goal.desired} ready"
    return ("True", POOL_READY, counted) if ready >= goal.desired else ("False", POOL_FILLING, counted)


def _waiting(pod_status: Mapping[str, Any]) -> str:
    """The scheduler's reason a pod has no node yet, or the kubelet's a container has not started (e.g.
    ErrImagePull); empty when neither says anything."""
    for condition in pod_status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message") or condition.get("reason") or "")
    for container in pod_status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") not in (None, "ContainerCreating"):
            return ": ".join(str(part) for part in (waiting.get("reason"), waiting.get("message")) if part)
    return ""


def _ready(pod_status: Mapping[str, Any]) -> bool:
    conditions = pod_status.get("conditions") or []
    running = pod_status.get("phase") == "Running"
    return running and any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pool_of(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of the pool a pod came from: its owner while idle, else its pool label."""
    metadata = pod.get("metadata", {})
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("apiVersion") == f"{GROUP}/{VERSION}" and owner.get("kind") == "WarmPool":
            return metadata["namespace"], owner["name"]
    name = (metadata.get("labels") or {}).get(POOL_LABEL)
    return (metadata["namespace"], name) if name else None


def _start_timer(delay: float, function: Callable[[], None]) -> None:
    timer = threading.Timer(delay, function)
    timer.daemon = True  # never holds up the operator's exit
    timer.start()


class PoolKeeper:
    """Reconciles pools, one at a time per pool (pod events and the pool's own changes may come at once, and
    two reconciliations of one pool side by side would both create the missing pods), and again after
    RETRY_SECONDS while a pool is short of what it could hold: a refused pod, a pod still starting, an API
    error. Its own timer, not Kopf's: a Kopf timer holds a finalizer on the pool, and a pool must stay
    deletable without the operator (`helm uninstall` removes both at once). While `backlog` says Executions
    wait in the queue for room on the nodes, pools hold no idle pods: their room runs those Executions."""

    def __init__(
        self,
        pools: WarmPools,
        facts: ClusterFacts,
        config: OperatorConfig,
        backlog: Backlog,
        schedule: Schedule = _start_timer,
    ) -> None:
        self._pools = pools
        self._facts = facts
        self._config = config
        self._backlog = backlog
        self._schedule = schedule
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._retrying: set[tuple[str, str]] = set()

    def reconcile(self, namespace: str, name: str) -> None:
        """_reconcile_once, and a retry later unless the pool holds all it can."""
        try:
            settled_now = self._reconcile_once(namespace, name)
        except ApiError:
            self._retry_later(namespace, name)
            raise
        if not settled_now:
            self._retry_later(namespace, name)

    def _reconcile_once(self, namespace: str, name: str) -> bool:
        """Reads the pool and its pods afresh, deletes what must go (only the version listed: a pod claimed
        meanwhile is never deleted), creates what is missing (after the namespace's pool NetworkPolicy), and
        writes the status if it changed. True when the pool is gone or holds all it can."""
        with self._lock(namespace, name):
            pool = self._pools.read(namespace, name)
            if pool is None or pool["metadata"].get("deletionTimestamp"):
                metrics.pool_removed(namespace, name)
                return True  # Garbage collection deletes its idle pods (they are owned by it); claimed ones stay.
            goal = self._target(pool)
            backlog = self._backlog()
            # A backlog waits for room that idle pool pods hold: each is deleted (on its listed version, so one
            # claimed meanwhile stays) and none created, until the backlog ends. Claimed pods are not idle.
            desired = 0 if backlog else goal.desired
            pods = self._pools.list_pods(namespace, builders.pool_selector(name))
            steps = plan(desired, goal.template.hash if goal.template else None, idle_pods(pods, _uid(pool)))
            for pod_name, version in steps.delete:
                self._pools.delete_pod(namespace, pod_name, version)
            created, refused = self._create(pool, goal, steps.create)
            generation: int = pool["metadata"].get("generation", 1)
            current = pool.get("status") or {}
            replicas = steps.kept + created
            patch = status_patch(
                current, goal, replicas, steps.ready, refused, generation, _now(), steps.waiting, backlog
            )
            if patch is not None:
                self._pools.patch_status(namespace, name, patch)
            metrics.pool_observed(namespace, name, goal.desired, steps.ready)
            # A missing RuntimeClass sends no event when it comes: look again.
            waits_for_class = goal.problem is not None and goal.problem[0] == RUNTIME_CLASS_MISSING
            return refused is None and not steps.delete and steps.ready == desired and not waits_for_class

    def _retry_later(self, namespace: str, name: str) -> None:
        with self._guard:
            if (namespace, name) in self._retrying:
                return
            self._retrying.add((namespace, name))
        self._schedule(RETRY_SECONDS, lambda: self._retry(namespace, name))

    def _retry(self, namespace: str, name: str) -> None:
        with self._guard:
            self._retrying.discard((namespace, name))
        try:
            self.reconcile(namespace, name)
        except ApiError as error:
            log.warning(f"WarmPool {namespace}/{name}: {error}; retrying in {RETRY_SECONDS} s")

    def _target(self, pool: Mapping[str, Any]) -> Target:
        runtimes = parse_runtimes(self._facts.list_runtimes())
        runtime_class = self._config.runtime_class
        class_exists = not runtime_class or self._facts.runtime_class_exists(runtime_class)
        probe = isolation_probe(self._facts.api_service())
        return target(pool.get("spec", {}), runtimes, self._config, class_exists, probe)

    def _create(self, pool: Mapping[str, Any], goal: Target, count: int) -> tuple[int, str | None]:
        """Creates `count` pods; stops at a refusal (a quota: the next would be refused too) and says why."""
        if count <= 0 or goal.template is None:
            return 0, None
        metadata = pool["metadata"]
        ref = PoolRef(metadata["namespace"], metadata["name"], metadata["uid"])
        template = goal.template
        # Before any pod: a pool pod never runs unfenced.
        self._pools.ensure_networkpolicy(builders.warm_networkpolicy(ref.namespace))
        probe = isolation_probe(self._facts.api_service())
        pod = builders.warm_pod(ref, template.runtime, template.cpu_millis, template.memory_bytes, self._config, probe)
        for created in range(count):
            try:
                self._pools.create_pod(pod)
            except ApiError as error:
                if error.status in REFUSED_CREATE_STATUSES:
                    return created, _refusal(str(error), template)
                raise
        return count, None

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((namespace, name), threading.Lock())


def _refusal(error: str, template: Template) -> str:
    size = f"{format_cpu(template.cpu_millis)} CPU, {format_memory(template.memory_bytes)} memory"
    return f"a pool pod ({size}) was refused; retrying: {error}"


def _uid(body: Body) -> str:
    uid: str = body["metadata"]["uid"]
    return uid


def _now() -> datetime:
    return datetime.now(UTC)
