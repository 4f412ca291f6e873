"""Kopf wiring: which events reach the lifecycle, the warm pools, the bindings' status and the webhook; Kopf's
settings; the memo's parts."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from codeexec import admission, bindings, lifecycle, peering, queueing, status, warm, warmpools
from codeexec.api import ApiError, ClusterApi
from codeexec.config import OperatorConfig
from codeexec.dispatch import Dispatcher, Snapshot
from codeexec.models import GROUP, VERSION
from codeexec.persistence import DigestDiffBaseStorage
from codeexec.vocabulary import (
    EXECUTION_UID_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    POOL_LABEL,
    TEMPLATE_HASH_LABEL,
    Phase,
)

EXECUTIONS = (GROUP, VERSION, "executions")
WARMPOOLS = (GROUP, VERSION, "warmpools")
RUNTIMES = (GROUP, VERSION, "runtimes")
SANDBOXBINDINGS = (GROUP, VERSION, "sandboxbindings")
BINDING_USERS_INDEX = "binding_users"  # the index's id: handlers get it as a keyword argument of this name
POOLS = "pools"
POOL_INDEX = "warm_pools"  # the index's id: handlers get it as a keyword argument of this name
WATCH_INTERVAL = 5
QUEUE = "queue"
QUEUE_INDEX = "execution_queue"  # the index's id: handlers get it as a keyword argument of this name
WARM_INDEX = "warm_pods"  # likewise
WARM_COUNT_ATTEMPTS = 3
# Pod phases after which the kubelet has stopped the pod and the scheduler no longer counts its requests.
POD_ENDED = ("Succeeded", "Failed")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kopf's bookkeeping lives in annotations, never in .status, which is the API.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    # A digest, not Kopf's copy of the spec: with kubectl's own copy it can exceed the annotation limit.
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(prefix=GROUP)
    # Timers need a finalizer while they run (see the `when` filter of watch_execution).
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Without timeouts a watch can silently stop delivering events.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    # Only problems become Kubernetes Events on the Execution.
    settings.posting.level = logging.WARNING


@kopf.on.startup()
def configure_peering(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Replicas: one works, the others stand by (Kopf pauses them) until its peering record is gone or expired."""
    priority = peering.configure(settings, _config(memo))
    if priority is not None:
        logger.info(f"Peering in ClusterKopfPeering {settings.peering.name!r} with priority {priority}.")


def _unfinished(body: kopf.Body, **_: Any) -> bool:
    return not status.is_terminal(body.get("status", {}).get("phase"))


def _needs_watching(body: kopf.Body, **_: Any) -> bool:
    # Limits kopf's timer finalizer to Executions that still need the operator. One being deleted needs nothing
    # more: Kopf then drops the finalizer at once. Kept, it would wait for the timer to exit, and a timer call
    # still in flight (a thread, slow on a busy node) puts the next look 60 s later (cancellation_polling).
    if body.get("metadata", {}).get("deletionTimestamp"):
        return False
    return _unfinished(body) or body.get("spec", {}).get("ttlSecondsAfterFinished") is not None


@kopf.index(*EXECUTIONS, id=QUEUE_INDEX, when=_unfinished)
def execution_queue(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, queueing.Entry]:
    """The queue, derived from the cluster: every unfinished Execution, rebuilt from the listing at start-up
    (Kopf runs no handler before). One key for all: a handler's thread copies them in one step."""
    return {QUEUE: queueing.entry(body, _config(memo))}


# The filter keeps a restart from touching every finished Execution in the cluster.
@kopf.on.resume(*EXECUTIONS, when=_unfinished)
@kopf.on.create(*EXECUTIONS, when=_unfinished)
def start_execution(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """A new (or, after a restart, unfinished) Execution: validated, then queued or started."""
    with lifecycle.retry_on_api_errors():
        _dispatcher(memo).start(body, logger, _snapshot(kwargs))
        _follow_backlog(memo, logger, kwargs)


@kopf.on.event("", "v1", "pods", labels={MANAGED_BY_LABEL: MANAGED_BY, EXECUTION_UID_LABEL: kopf.PRESENT})
def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Pod changes → Execution status. A pod that stopped (its phase ended, or it is gone) frees its room
    for the next in the queue at once. The initial listing after a restart re-delivers every sandbox pod,
    so runs that finished while the operator was down are harvested too."""
    execution = lifecycle.owner_of(body)
    if execution is None:
        return
    dispatcher = _dispatcher(memo)
    deleted = event.get("type") == "DELETED"
    stopped = deleted or body.get("status", {}).get("phase") in POD_ENDED
    with lifecycle.retry_on_api_errors():
        # watch_execution notices a recorded pod (status.podName) that vanished too early; this one too.
        if not deleted or dispatcher.launched(execution.uid):
            pod = None if deleted else dict(body)
            if lifecycle.sync_with_pod(_cluster(memo), _config(memo), execution, pod):
                dispatcher.finished(execution, pod_stopped=stopped)
                dispatcher.dispatch(logger, _snapshot(kwargs))
        if stopped:
            dispatcher.released(execution)
            dispatcher.dispatch(logger, _snapshot(kwargs))
        _follow_backlog(memo, logger, kwargs)


@kopf.timer(*EXECUTIONS, interval=WATCH_INTERVAL, idle=WATCH_INTERVAL, when=_needs_watching)
def watch_execution(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """Every few seconds while the operator is needed: lifecycle.watch, and the queue's safety net (a
    decision at most once a second across all timers, then this Execution's position if it moved)."""
    dispatcher = _dispatcher(memo)
    execution = lifecycle.execution_ref(body)
    with lifecycle.retry_on_api_errors():
        if lifecycle.watch(_cluster(memo), _config(memo), body, dispatcher.launched(execution.uid)):
            dispatcher.finished(execution, pod_stopped=False)
        if _unfinished(body):
            dispatcher.dispatch(logger, _snapshot(kwargs), timer=True)
            _follow_backlog(memo, logger, kwargs)
            dispatcher.refresh_position(body)


# No Kopf timer (it would hold a finalizer on every pool): PoolKeeper retries a pool short of its pods itself.
@kopf.on.resume(*WARMPOOLS)
@kopf.on.create(*WARMPOOLS)
@kopf.on.update(*WARMPOOLS)
def keep_pool(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A pool created, changed, or resumed after a restart: warmpools.PoolKeeper.reconcile."""
    with lifecycle.retry_on_api_errors():
        _pools(memo).reconcile(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.index(*WARMPOOLS, id=POOL_INDEX)
def warm_pools(body: kopf.Body, **_: Any) -> dict[str, tuple[str, str]]:
    """Every pool (namespace, name), for Runtime changes: one key for all."""
    return {POOLS: (body["metadata"]["namespace"], body["metadata"]["name"])}


@kopf.on.event(*RUNTIMES)
def runtime_changed(event: kopf.RawEvent, memo: kopf.Memo, **kwargs: Any) -> None:
    """A Runtime added, changed or deleted: every pool reconciles at once (those of that Runtime roll to its new
    image or size, or fill, or empty; the others find nothing to do). A settled pool has no timer to notice."""
    if event.get("type") is None:
        return  # the listing at start-up: every pool resumes by itself
    with lifecycle.retry_on_api_errors():
        _reconcile_pools(memo, kwargs)


def _follow_backlog(memo: kopf.Memo, logger: kopf.Logger, kwargs: Mapping[str, Any]) -> None:
    """After a queue decision: when Executions started (or ceased) to wait for room on the nodes, every pool
    reconciles at once, yielding its idle pods' room to them (or refilling). A settled pool has no timer. A
    pool's API error is only logged: PoolKeeper retries that pool itself, and the Execution's handler that
    made the decision has nothing to retry."""
    if not _dispatcher(memo).backlog_turned():
        return
    try:
        _reconcile_pools(memo, kwargs)
    except ApiError as error:
        logger.warning(f"warm pools not reconciled after the queue's backlog changed: {error}; retrying")


def _reconcile_pools(memo: kopf.Memo, kwargs: Mapping[str, Any]) -> None:
    """warmpools.PoolKeeper.reconcile of every pool; an API error is raised after the others reconciled."""
    index: kopf.Index[str, tuple[str, str]] = kwargs[POOL_INDEX]
    failed: ApiError | None = None
    for namespace, name in list(index.get(POOLS, ())):
        try:
            _pools(memo).reconcile(namespace, name)
        except ApiError as error:
            failed = error  # the other pools still reconcile; PoolKeeper retries this one
    if failed is not None:
        raise failed


@kopf.index(
    "",
    "v1",
    "pods",
    id=WARM_INDEX,
    labels={MANAGED_BY_LABEL: MANAGED_BY, POOL_LABEL: kopf.PRESENT, EXECUTION_UID_LABEL: kopf.ABSENT},
)
def warm_pods(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
    """The pool pods ready to be claimed, by (namespace, template hash): the queue starts an Execution that
    one fits without room of its own. A pod leaves the index once claimed (labelled: the filter no longer
    matches) or no longer ready (an empty result; None would keep its last entry)."""
    if not warm.ready_candidates([body]):
        return {}
    return {(body["metadata"]["namespace"], body["metadata"]["labels"][TEMPLATE_HASH_LABEL]): body["metadata"]["name"]}


@kopf.on.event("", "v1", "pods", labels={MANAGED_BY_LABEL: MANAGED_BY, POOL_LABEL: kopf.PRESENT})
def pool_pod_event(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    """A pool pod changed (ready, ended, claimed, gone): its pool refills or counts it at once, and a pod
    that became ready may start a queued Execution now."""
    pool = warmpools.pool_of(body)
    if pool is not None:
        with lifecycle.retry_on_api_errors():
            _pools(memo).reconcile(*pool)
    if warm.ready_candidates([body]) and EXECUTION_UID_LABEL not in body["metadata"].get("labels", {}):
        with lifecycle.retry_on_api_errors():
            _dispatcher(memo).dispatch(logger, _snapshot(kwargs))
            _follow_backlog(memo, logger, kwargs)


def _names_bindings(body: kopf.Body, **_: Any) -> bool:
    return bool(body.get("spec", {}).get("bindings"))


def _running_with_bindings(body: kopf.Body, **_: Any) -> bool:
    return body.get("status", {}).get("phase") == Phase.RUNNING and _names_bindings(body)


@kopf.index(*EXECUTIONS, id=BINDING_USERS_INDEX, when=_running_with_bindings)
def binding_users(body: kopf.Body, **_: Any) -> dict[bindings.BindingKey, str]:
    """The running Executions by each SandboxBinding they name (namespace, binding name): its inUse and usedBy.
    An Execution leaves the index when it stops running (the filter no longer matches) or goes."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    return {(namespace, binding): name for binding in body["spec"]["bindings"]}


# Event handlers, not on.create/on.update: no Kopf annotations, and no finalizer, on anyone's SandboxBinding
# (a finalizer there would make deleting a namespace or uninstalling wait for the operator).
@kopf.on.event(*EXECUTIONS, when=_names_bindings)
def binding_use_changed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """An Execution with bindings changed or went: the bindings whose running users changed say so."""
    metadata = body["metadata"]
    _bindings(memo).users_changed(metadata["namespace"], body["spec"]["bindings"], _binding_users(kwargs))


@kopf.on.event(*SANDBOXBINDINGS)
def binding_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A SandboxBinding created, changed or listed at start-up: its status (Ready, inUse, usedBy)."""
    if event.get("type") == "DELETED":
        _bindings(memo).forget(body["metadata"]["namespace"], body["metadata"]["name"])
    else:
        _bindings(memo).reconcile(dict(body), _binding_users(kwargs))


def validate_execution(spec: kopf.Spec, memo: kopf.Memo, warnings: list[str], **_: Any) -> None:
    """Admission webhook (registered by register_webhook only when enabled): admission.validate."""
    admission.validate(spec, _cluster(memo).facts, _config(memo), warnings)


def register_webhook(registry: kopf.OperatorRegistry) -> None:
    """Kopf refuses to start with admission handlers but no webhook server: a local operator
    (no Service to reach it) runs without this handler."""
    kopf.on.validate(*EXECUTIONS, id=admission.WEBHOOK_ID, operations=["CREATE"], registry=registry)(validate_execution)


def _config(memo: kopf.Memo) -> OperatorConfig:
    config: OperatorConfig = memo["config"]
    return config


def _dispatcher(memo: kopf.Memo) -> Dispatcher:
    dispatcher: Dispatcher = memo["dispatcher"]
    return dispatcher


def _pools(memo: kopf.Memo) -> warmpools.PoolKeeper:
    pools: warmpools.PoolKeeper = memo["pools"]
    return pools


def _bindings(memo: kopf.Memo) -> bindings.BindingKeeper:
    keeper: bindings.BindingKeeper = memo["bindings"]
    return keeper


def _binding_users(kwargs: Mapping[str, Any]) -> bindings.Users:
    index: kopf.Index[bindings.BindingKey, str] = kwargs[BINDING_USERS_INDEX]
    return lambda key: list(index.get(key, ()))


def _snapshot(kwargs: Mapping[str, Any]) -> Snapshot:
    """The indexes, which Kopf passes to every handler by their names (untyped in Kopf's handler types)."""
    queue: kopf.Index[str, queueing.Entry] = kwargs[QUEUE_INDEX]
    pods: kopf.Index[tuple[str, str], str] = kwargs[WARM_INDEX]
    # list() of a store's values runs in C, holding the GIL: Kopf's event loop cannot change it meanwhile.
    return Snapshot(lambda: list(queue.get(QUEUE, ())), lambda: _count_warm(pods))


def _count_warm(pods: kopf.Index[tuple[str, str], str]) -> dict[tuple[str, str], int]:
    # Iterating the index's keys is Python code: Kopf's event loop may add one meanwhile; then count again.
    for _ in range(WARM_COUNT_ATTEMPTS - 1):
        try:
            return {key: len(list(pods[key])) for key in list(pods)}
        except (RuntimeError, KeyError):
            continue
    return {}


def _cluster(memo: kopf.Memo) -> ClusterApi:
    cluster: ClusterApi = memo["cluster"]
    return cluster
