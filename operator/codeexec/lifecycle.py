"""The Execution lifecycle in named steps (admit, launch, expire, sync with the pod, watch) against the ClusterApi."""

from __future__ import annotations

import contextlib
import enum
import functools
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from codeexec import bindings, bindingtoken, builders, egress, metrics, milestones, queueing, resolver, status, warm
from codeexec.api import CONFLICT, NOT_FOUND, ApiError, ClusterApi, ClusterFacts
from codeexec.builders import ExecutionRef
from codeexec.config import OperatorConfig
from codeexec.egress import PinnedHost
from codeexec.models import GROUP, VERSION
from codeexec.validation import Plan, Rejection, format_cpu, format_memory, parse_runtimes, plan_execution
from codeexec.vocabulary import BINDINGS_UNAVAILABLE, EXECUTION_UID_LABEL, QUEUED, Sandbox

API_RETRY_DELAY = 5
# Tries of a pod sync whose status patch conflicts with a concurrent change of the Execution.
SYNC_ATTEMPTS = 3
# API statuses after which creating the sandbox again cannot succeed (invalid, forbidden).
PERMANENT_CREATE_ERRORS = (400, 403, 422)

Admitted = tuple[Plan, tuple[PinnedHost, ...]]

# The binding token key, read at the first launch that needs it, then kept (a key that could not be read is
# tried again at the next); a new key takes an operator restart, as it does the broker's.
_token_key = functools.cache(bindingtoken.read_key)


class Launch(enum.Enum):
    """What launching a queued Execution came to."""

    STARTED = "started"  # its sandbox exists (created now, or before): it holds capacity
    REFUSED = "refused"  # the namespace's ResourceQuota or LimitRange refused the pod: it stays queued
    ENDED = "ended"  # finished, rejected or gone: it holds nothing


def admit_new(api: ClusterApi, config: OperatorConfig, body: kopf.Body, logger: kopf.Logger) -> Admitted | None:
    """Validates a new Execution; None when it was rejected (status written) or a fresh read shows it
    accepted, finished or gone already (the event's body can be seconds old: the listing after a restart)."""
    latest = _fresh(api, execution_ref(body))
    if latest is None or latest.get("status", {}).get("phase") is not None:
        return None
    admitted = _admit(api.facts, config, body["metadata"]["namespace"], body.get("spec", {}))
    if isinstance(admitted, Rejection):
        _reject(api, body, admitted, logger)
        return None
    return admitted


def mark_pending(
    api: ClusterApi, body: Mapping[str, Any], admitted: Admitted, waiting: queueing.Waiting | None
) -> None:
    """Pending goes first (once, before any pod exists), so it can never overwrite what pod events report
    later; with the queue's position and message when the Execution does not start at once."""
    plan, pinned = admitted
    resources = {"cpu": format_cpu(plan.cpu_millis), "memory": format_memory(plan.memory_bytes)}
    patch = status.pending(body.get("status", {}), *_stamp(body), resources, egress.pinned_addresses(pinned))
    if waiting is not None:
        patch |= status.queued(waiting.position, waiting.message)
    _write_status(api, body, patch, milestones.accepted(plan))


def write_position(api: ClusterApi, body: Mapping[str, Any], waiting: queueing.Waiting) -> None:
    """A queued Execution's new position, on the version read only: a 409 means it changed meanwhile
    (it may be running already), and the next refresh decides again."""
    metadata = body["metadata"]
    patch = status.queued(waiting.position, waiting.message)
    try:
        api.executions.patch_status(metadata["namespace"], metadata["name"], patch, metadata["resourceVersion"])
    except ApiError as error:
        if error.status != CONFLICT:
            raise


def launch(
    api: ClusterApi,
    config: OperatorConfig,
    execution: ExecutionRef,
    logger: kopf.Logger,
    admitted_now: Admitted | None = None,
) -> tuple[Launch, str]:
    """Creates the sandbox of an Execution the queue lets start, from fresh reads, and says what came of it
    (with the API's message when a quota refused). A sandbox that exists already is recorded, never made twice.
    `admitted_now`: its plan, made a moment ago at its acceptance (one that waited in the queue is planned
    again: its Runtime may have changed meanwhile)."""
    # The pod first, then the Execution: a sandbox removed after the first read was removed after
    # its outcome was written, which the second read then shows. Never a second pod, never a rerun.
    existing = api.sandboxes.find_pod(execution.namespace, execution.uid)
    latest = _fresh(api, execution)
    current = (latest or {}).get("status", {})
    if latest is None or status.is_terminal(current.get("phase")):
        return Launch.ENDED, ""
    if current.get("podName"):
        return Launch.STARTED, ""
    admitted = admitted_now or _admit(api.facts, config, execution.namespace, latest.get("spec", {}))
    if existing is not None:
        # Created or claimed before a restart but not yet recorded: its pod events tell the outcome.
        _resume_sandbox(api, execution, existing, admitted)
        return Launch.STARTED, ""
    if isinstance(admitted, Rejection):
        _reject(api, latest, admitted, logger)
        return Launch.ENDED, ""
    if _claim_warm(api, config, latest, *admitted):
        return Launch.STARTED, ""
    return _create_sandbox(api, config, latest, *admitted, logger)


def warm_template(api: ClusterApi, config: OperatorConfig, admitted: Admitted) -> str | None:
    """The template hash of the pool pods that could serve the Execution; None when no pool pod fits it."""
    plan, pinned = admitted
    if not warm.fits(plan, pinned):
        return None
    probe = egress.isolation_probe(api.facts.api_service())
    return builders.warm_template_hash(plan.runtime, plan.cpu_millis, plan.memory_bytes, config, probe)


def _warm_pods(
    api: ClusterApi, config: OperatorConfig, plan: Plan, pinned: tuple[PinnedHost, ...], namespace: str
) -> list[dict[str, Any]]:
    """The unclaimed pool pods whose template the Execution's plan would give; none when it does not fit."""
    template = warm_template(api, config, (plan, pinned))
    return [] if template is None else api.sandboxes.warm_pods(namespace, template)


def _claim_warm(
    api: ClusterApi, config: OperatorConfig, latest: Mapping[str, Any], plan: Plan, pinned: tuple[PinnedHost, ...]
) -> bool:
    """Claims a ready pool pod that fits and hands its runner the request; False when none could be had
    (the cold path then creates one). A pod claimed by another meanwhile fails our claim with 409."""
    execution = execution_ref(latest)
    idle = _warm_pods(api, config, plan, pinned, execution.namespace)
    owner = _owner_reference(latest)
    for pod in warm.ready_candidates(idle):
        name = pod["metadata"]["name"]
        began = time.monotonic()
        try:
            api.sandboxes.claim(
                execution.namespace, name, warm.claim_patch(pod, execution, owner, plan, config, _now())
            )
        except ApiError as error:
            if error.status in (CONFLICT, NOT_FOUND):
                continue  # claimed by another, or gone
            raise
        acknowledged = api.sandboxes.deliver(execution.namespace, name, warm.request(plan))
        metrics.CLAIM_SECONDS.observe(time.monotonic() - began)
        metrics.WARM_CLAIMS.inc()
        _leave_queue(latest)
        _announce(latest, milestones.sandbox_claimed(name, acknowledged))
        return True
    if idle:
        metrics.WARM_MISSES.inc()
    return False


def _resume_sandbox(
    api: ClusterApi, execution: ExecutionRef, pod: Mapping[str, Any], admitted: Admitted | Rejection
) -> None:
    """Records a sandbox found unrecorded after a restart. A claimed warm pod may have been claimed just
    before the restart, its request never sent: it is sent (again); a runner that has one ignores it."""
    name = pod["metadata"]["name"]
    waiting_for_code = status.sandbox_kind(pod) is Sandbox.WARM and not status.sandbox_terminated(pod)
    if waiting_for_code and not isinstance(admitted, Rejection):
        api.sandboxes.deliver(execution.namespace, name, warm.request(admitted[0]))
    api.executions.patch_status(execution.namespace, execution.name, {"podName": name})


def expire(api: ClusterApi, config: OperatorConfig, execution: ExecutionRef) -> None:
    """Fails an Execution whose queue deadline passed before it could start (QueueTimeout), on the version
    read only, and removes what a refused start left (ConfigMap, Secret, NetworkPolicy)."""
    existing = api.sandboxes.find_pod(execution.namespace, execution.uid)
    latest = _fresh(api, execution)
    current = (latest or {}).get("status", {})
    if latest is None or existing is not None or current.get("podName") or status.is_terminal(current.get("phase")):
        return  # gone, finished, or started after all: its pod decides
    try:
        _write_status(api, latest, status.queue_timeout(current, *_stamp(latest)), resource_version=_version(latest))
    except ApiError as error:
        if error.status != CONFLICT:
            raise
        return
    if not config.keep_pods:
        api.sandboxes.delete(execution.namespace, builders.child_name(execution))


def _fresh(api: ClusterApi, execution: ExecutionRef) -> dict[str, Any] | None:
    """The Execution as the API has it now; None when it is gone (or replaced by a namesake)."""
    latest = api.executions.read(execution.namespace, execution.name)
    if latest is None or latest["metadata"]["uid"] != execution.uid:
        return None
    return latest


def _admit(
    facts: ClusterFacts, config: OperatorConfig, namespace: str, spec: Mapping[str, Any]
) -> Admitted | Rejection:
    """The plan (runtime, timeout, resources, bindings) and the pinned allowed domains, or why the Execution
    cannot run. The namespace's SandboxBindings are listed once, only when it names some and there is a broker."""
    runtimes = parse_runtimes(facts.list_runtimes())
    class_exists = not config.runtime_class or facts.runtime_class_exists(config.runtime_class)
    needs_bindings = bool(spec.get("bindings")) and bool(config.broker_service)
    granted = bindings.granted(facts.sandbox_bindings(namespace)) if needs_bindings else {}
    return pin_allowed_domains(facts, config, plan_execution(spec, runtimes, config, class_exists, granted))


def pin_allowed_domains(facts: ClusterFacts, config: OperatorConfig, plan: Plan | Rejection) -> Admitted | Rejection:
    """The plan with spec.network.allowedDomains resolved and every address checked (egress.pin_domains).
    Resolved on every attempt, so pins are never older than the sandbox they go into."""
    if isinstance(plan, Rejection):
        return plan
    domains = plan.spec.network.allowed_domains if plan.spec.network else []
    if not domains:
        return plan, ()
    resolved = resolver.resolve_all(egress.parse_domain(domain)[0] for domain in domains)
    nodes, api_endpoint_slices = facts.network_objects()
    forbidden = egress.cluster_networks(
        config.cluster_cidrs, nodes, facts.api_service(), api_endpoint_slices, service_cidrs=facts.service_cidrs()
    )
    pinned = egress.pin_domains(domains, resolved, forbidden, config.allowed_private_cidrs)
    return pinned if isinstance(pinned, Rejection) else (plan, pinned)


def _reject(api: ClusterApi, body: Mapping[str, Any], rejection: Rejection, logger: kopf.Logger) -> None:
    """The Execution will never run: Rejected (or Failed, for a missing RuntimeClass), with the reason."""
    # Info, not warning: the Warning Event comes from _write_status, with the reason.
    logger.info(f"{rejection.reason}: {rejection.message}")
    patch = status.rejected(body.get("status", {}), rejection.reason, rejection.message, *_stamp(body))
    _write_status(api, body, patch)


def _create_sandbox(
    api: ClusterApi,
    config: OperatorConfig,
    latest: Mapping[str, Any],
    plan: Plan,
    pinned: tuple[PinnedHost, ...],
    logger: kopf.Logger,
) -> tuple[Launch, str]:
    """Creates the ConfigMap (and with bindings the Secret of bindings.json), the NetworkPolicy, then the pod. A
    quota's refusal keeps the Execution queued with the API's message; another refusal for good fails it; other
    errors are retried."""
    execution = execution_ref(latest)
    sandbox = builders.child_name(execution)  # the pod's, ConfigMap's, Secret's and NetworkPolicy's name
    current = latest.get("status", {})
    access = _broker_access(api, config, execution) if plan.bindings else None
    if isinstance(access, Rejection):
        _reject(api, latest, access, logger)
        return Launch.ENDED, ""
    probe = egress.isolation_probe(api.facts.api_service())
    children = [
        builders.configmap(execution, plan),
        *([] if access is None else [builders.bindings_secret(execution, plan, access)]),
        # The NetworkPolicy exists before the pod, so the pod never runs unfenced.
        builders.networkpolicy(execution, pinned, None if access is None else access.broker),
        builders.pod(execution, plan, config, pinned, isolation_probe=probe),
    ]
    try:
        for child in children:
            # Not kopf.adopt: it would copy the Execution's labels onto the pod, and a
            # user label could make other NetworkPolicies select (and open) the sandbox.
            kopf.append_owner_reference(child, owner=kopf.Body(cast(kopf.RawBody, dict(latest))))
            _check_owned(api.sandboxes.create(child), execution)
    except ApiError as error:
        if queueing.is_quota_refusal(error.status, str(error)):
            patch = status.queued(current.get("queuePosition"), str(error))
            if current.get("message") != patch["message"]:
                api.executions.patch_status(execution.namespace, execution.name, patch)
            return Launch.REFUSED, str(error)
        if error.status not in PERMANENT_CREATE_ERRORS:
            raise
        logger.info(f"sandbox not created: {error}")
        _write_status(api, latest, status.sandbox_not_created(current, str(error), *_stamp(latest)))
        if not config.keep_pods:
            api.sandboxes.delete(execution.namespace, sandbox)
        return Launch.ENDED, ""
    resolved_addresses = egress.pinned_addresses(pinned)
    if resolved_addresses and resolved_addresses != current.get("resolvedAddresses"):
        # As pinned now: re-resolved since the acceptance (the queue) or before a restart.
        api.executions.patch_status(execution.namespace, execution.name, {"resolvedAddresses": resolved_addresses})
    _leave_queue(latest)
    _announce(latest, milestones.sandbox_created(sandbox))
    return Launch.STARTED, ""


def _broker_access(
    api: ClusterApi, config: OperatorConfig, execution: ExecutionRef
) -> bindings.BrokerAccess | Rejection:
    """The broker as the Execution's sandbox reaches it (one read of its Service) and the Execution's token; or
    why it cannot (the Execution is then rejected: its code would find no broker)."""
    try:
        key = _token_key(config.binding_token_key_file)
    except bindingtoken.TokenKeyError as error:
        return Rejection(BINDINGS_UNAVAILABLE, str(error))
    namespace, _, name = config.broker_service.partition("/")
    broker = bindings.broker_of(config.broker_service, api.facts.broker_service(namespace, name))
    if isinstance(broker, str):
        return Rejection(BINDINGS_UNAVAILABLE, broker)
    return bindings.BrokerAccess(broker, bindingtoken.mint(key, execution.namespace, execution.name, execution.uid))


def _leave_queue(latest: Mapping[str, Any]) -> None:
    """The Execution got its sandbox: how long it waited, and an Event when it waited in the queue."""
    waited = max(0.0, (_now() - status.parse_time(latest["metadata"]["creationTimestamp"])).total_seconds())
    metrics.dequeued(waited)
    if latest.get("status", {}).get("reason") == QUEUED:
        _announce(latest, milestones.dequeued(waited))


def watch(api: ClusterApi, config: OperatorConfig, body: Mapping[str, Any], launched: bool) -> bool:
    """Catches what pod events cannot: start deadlines, vanished pods, missed events, TTL. `launched`: this
    process created its sandbox, not yet recorded in the status. True when it wrote a final phase."""
    current = body.get("status", {})
    execution = execution_ref(body)
    if status.is_terminal(current.get("phase")):
        ttl = body.get("spec", {}).get("ttlSecondsAfterFinished")
        if status.ttl_expired(current, ttl, _now()):
            api.executions.delete(execution.namespace, execution.name)
        return False
    pod_name = current.get("podName")
    if pod_name:
        return sync_with_pod(api, config, execution, api.sandboxes.read_pod(execution.namespace, pod_name))
    if launched:
        # Not yet recorded: a missing pod may be one still being created, so only a pod found counts.
        pod = api.sandboxes.find_pod(execution.namespace, execution.uid)
        if pod is not None:
            return sync_with_pod(api, config, execution, pod)
    return False


def sync_with_pod(
    api: ClusterApi, config: OperatorConfig, execution: ExecutionRef, pod: Mapping[str, Any] | None
) -> bool:
    """_sync_once, again on a fresh read when the Execution changed between its read and its patch
    (409): Kopf never retries an event handler, and the timer would only try seconds later. True when
    it wrote a final phase (a slot of the queue is free)."""
    for attempt in range(1, SYNC_ATTEMPTS + 1):
        try:
            return _sync_once(api, config, execution, pod)
        except ApiError as error:
            if error.status != CONFLICT or attempt == SYNC_ATTEMPTS:
                raise
    return False


def _sync_once(api: ClusterApi, config: OperatorConfig, execution: ExecutionRef, pod: Mapping[str, Any] | None) -> bool:
    """Writes what the pod (or its absence) says into the Execution, then removes a finished
    sandbox. Reads the Execution afresh and patches only that version of it. True when it wrote a final phase."""
    latest = api.executions.read(execution.namespace, execution.name)
    if latest is None or latest["metadata"]["uid"] != execution.uid:
        metrics.forget(execution.uid)
        return False  # The owner is gone; garbage collection removes the pod.
    finished = status.is_terminal(latest.get("status", {}).get("phase"))
    ended_now = False
    if not finished:
        patch = _status_from_pod(api, config, latest, pod)
        if patch is None:
            return False
        _write_status(api, latest, patch, resource_version=_version(latest))
        finished = ended_now = status.is_terminal(patch.get("phase"))
    being_deleted = pod is not None and pod["metadata"].get("deletionTimestamp")
    if finished and pod is not None and not being_deleted and not config.keep_pods:
        api.sandboxes.delete(execution.namespace, pod["metadata"]["name"])
    return ended_now


def _status_from_pod(
    api: ClusterApi, config: OperatorConfig, latest: Mapping[str, Any], pod: Mapping[str, Any] | None
) -> status.Patch | None:
    """The status patch of what the pod says (with the runner's report once it ended); None: no change."""
    current = latest.get("status", {})
    if pod is None:
        return status.pod_deleted(current, *_stamp(latest))
    report = None
    if status.sandbox_terminated(pod):
        report = api.sandboxes.read_report(latest["metadata"]["namespace"], pod["metadata"]["name"])
    return status.from_pod(current, pod, report, config, *_stamp(latest), queueing.queue_deadline(latest, config))


def _write_status(
    api: ClusterApi,
    execution: Mapping[str, Any],
    patch: status.Patch,
    milestone: milestones.Milestone | None = None,
    resource_version: str | None = None,
) -> None:
    """Patches the status of the Execution as read, then counts the change and announces it."""
    metadata = execution["metadata"]
    api.executions.patch_status(metadata["namespace"], metadata["name"], patch, resource_version)
    previous = execution.get("status", {}).get("phase")
    metrics.record(metadata["uid"], execution.get("spec", {}).get("language"), previous, patch)
    _announce(execution, milestone or milestones.from_patch(previous, patch))


def _announce(execution: Mapping[str, Any], milestone: milestones.Milestone | None) -> None:
    if milestone is not None:
        body = kopf.Body(cast(kopf.RawBody, dict(execution)))
        kopf.event(body, type=milestone.type, reason=milestone.reason, message=milestone.message)


@contextlib.contextmanager
def retry_on_api_errors() -> Iterator[None]:
    """A failed API call becomes Kopf's TemporaryError: the handler runs again after a delay."""
    try:
        yield
    except ApiError as error:
        raise kopf.TemporaryError(str(error), delay=API_RETRY_DELAY) from error


def _check_owned(child: Mapping[str, Any], execution: ExecutionRef) -> None:
    """An object found under our name (409) must be this Execution's, not a stale one's."""
    labels = child.get("metadata", {}).get("labels") or {}
    if labels.get(EXECUTION_UID_LABEL) != execution.uid:
        name = child.get("metadata", {}).get("name")
        raise kopf.TemporaryError(
            f"{child.get('kind')} {name} belongs to another Execution; waiting for it to go",
            delay=API_RETRY_DELAY,
        )


def owner_of(pod: Mapping[str, Any]) -> ExecutionRef | None:
    """The Execution a sandbox pod belongs to, from its owner reference."""
    for reference in pod.get("metadata", {}).get("ownerReferences") or []:
        if reference.get("apiVersion") == f"{GROUP}/{VERSION}" and reference.get("kind") == "Execution":
            return ExecutionRef(pod["metadata"]["namespace"], reference["name"], reference["uid"])
    return None


def _owner_reference(execution: Mapping[str, Any]) -> dict[str, Any]:
    """The owner reference to the Execution that its sandbox carries (Kopf's, as for created children)."""
    child: dict[str, Any] = {"metadata": {}}
    kopf.append_owner_reference(child, owner=kopf.Body(cast(kopf.RawBody, dict(execution))))
    reference: dict[str, Any] = child["metadata"]["ownerReferences"][0]
    return reference


def execution_ref(body: Mapping[str, Any]) -> ExecutionRef:
    metadata = body["metadata"]
    return ExecutionRef(metadata["namespace"], metadata["name"], metadata["uid"])


def _version(body: Mapping[str, Any]) -> str:
    version: str = body["metadata"]["resourceVersion"]
    return version


def _stamp(body: Mapping[str, Any]) -> tuple[datetime, int]:
    """Now and the generation a status patch is computed from."""
    generation: int = body["metadata"].get("generation", 1)
    return _now(), generation


def _now() -> datetime:
    return datetime.now(UTC)
