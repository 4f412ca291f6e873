"""The Execution lifecycle in named steps (start, sync with the pod, watch), against the ClusterApi Protocol."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from codeexec import builders, egress, metrics, milestones, resolver, status
from codeexec.api import CONFLICT, ApiError, ClusterApi, ClusterFacts
from codeexec.builders import ExecutionRef
from codeexec.config import OperatorConfig
from codeexec.egress import PinnedHost
from codeexec.models import GROUP, VERSION
from codeexec.validation import Plan, Rejection, parse_runtimes, plan_execution
from codeexec.vocabulary import EXECUTION_UID_LABEL

API_RETRY_DELAY = 5
# Tries of a pod sync whose status patch conflicts with a concurrent change of the Execution.
SYNC_ATTEMPTS = 3
# API statuses after which creating the sandbox again cannot succeed (invalid, forbidden).
PERMANENT_CREATE_ERRORS = (400, 403, 422)

Admitted = tuple[Plan, tuple[PinnedHost, ...]]


def start(api: ClusterApi, config: OperatorConfig, body: kopf.Body, logger: kopf.Logger) -> None:
    """Validates a new Execution and creates its sandbox: ConfigMap, NetworkPolicy, then Pod."""
    metrics.track(body["metadata"]["uid"], body.get("status", {}).get("phase"))
    if body.get("status", {}).get("podName"):
        return  # Its pod was created before: never start a second run.
    if _already_started(api, execution_ref(body)):
        return
    admitted = _admit(api.facts, config, body.get("spec", {}))
    if isinstance(admitted, Rejection):
        _reject(api, body, admitted, logger)
        return
    plan, pinned = admitted
    _mark_pending(api, body, plan, pinned)
    _create_sandbox(api, config, body, plan, pinned, logger)


def _already_started(api: ClusterApi, execution: ExecutionRef) -> bool:
    """Whether the Execution has its sandbox or its outcome already; a sandbox created before a
    restart but not yet recorded is recorded now (its pod events will tell the outcome)."""
    sandbox = builders.child_name(execution)
    # The pod first, then the Execution: a sandbox removed after the first read was removed after
    # its outcome was written, which the second read then shows. Never a second pod, never a rerun.
    existing = api.sandboxes.read_pod(execution.namespace, sandbox)
    if _started_or_finished(api, execution):
        return True
    if existing is None:
        return False
    _check_owned(existing, execution)
    api.executions.patch_status(execution.namespace, execution.name, {"podName": sandbox})
    return True


def _started_or_finished(api: ClusterApi, execution: ExecutionRef) -> bool:
    """Whether a fresh read shows the Execution's pod recorded or its outcome written (or the Execution
    gone). The event's body can be seconds old (the listing after a restart): a pod event may have
    recorded the outcome meanwhile and removed the sandbox, which must not be created again."""
    latest = api.executions.read(execution.namespace, execution.name)
    if latest is None or latest["metadata"]["uid"] != execution.uid:
        return True
    current = latest.get("status", {})
    return status.is_terminal(current.get("phase")) or bool(current.get("podName"))


def _admit(facts: ClusterFacts, config: OperatorConfig, spec: Mapping[str, Any]) -> Admitted | Rejection:
    """The plan (runtime, timeout, resources) and the pinned allowed domains, or why the Execution cannot run."""
    runtimes = parse_runtimes(facts.list_runtimes())
    class_exists = not config.runtime_class or facts.runtime_class_exists(config.runtime_class)
    return pin_allowed_domains(facts, config, plan_execution(spec, runtimes, config, class_exists))


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


def _reject(api: ClusterApi, body: kopf.Body, rejection: Rejection, logger: kopf.Logger) -> None:
    """The Execution will never run: Rejected (or Failed, for a missing RuntimeClass), with the reason."""
    # Info, not warning: the Warning Event comes from _write_status, with the reason.
    logger.info(f"{rejection.reason}: {rejection.message}")
    patch = status.rejected(body.get("status", {}), rejection.reason, rejection.message, *_stamp(body))
    _write_status(api, body, patch)


def _mark_pending(api: ClusterApi, body: kopf.Body, plan: Plan, pinned: tuple[PinnedHost, ...]) -> None:
    """Pending goes first (once), so it can never overwrite what pod events report later."""
    current = body.get("status", {})
    if current.get("phase") is None:
        patch = status.pending(current, *_stamp(body), egress.pinned_addresses(pinned))
        _write_status(api, body, patch, milestones.accepted(plan))


def _create_sandbox(
    api: ClusterApi,
    config: OperatorConfig,
    body: kopf.Body,
    plan: Plan,
    pinned: tuple[PinnedHost, ...],
    logger: kopf.Logger,
) -> None:
    """Creates the ConfigMap, the NetworkPolicy, then the pod, and records the pod's name. A creation
    the API server refuses for good fails the Execution; other errors are retried."""
    execution = execution_ref(body)
    sandbox = builders.child_name(execution)  # the pod's, ConfigMap's and NetworkPolicy's name
    probe = egress.isolation_probe(api.facts.api_service())
    children = [
        builders.configmap(execution, plan),
        # The NetworkPolicy exists before the pod, so the pod never runs unfenced.
        builders.networkpolicy(execution, pinned),
        builders.pod(execution, plan, config, pinned, isolation_probe=probe),
    ]
    try:
        for child in children:
            # Not kopf.adopt: it would copy the Execution's labels onto the pod, and a
            # user label could make other NetworkPolicies select (and open) the sandbox.
            kopf.append_owner_reference(child, owner=body)
            _check_owned(api.sandboxes.create(child), execution)
    except ApiError as error:
        if error.status not in PERMANENT_CREATE_ERRORS:
            raise
        logger.info(f"sandbox not created: {error}")
        _write_status(api, body, status.sandbox_not_created(body.get("status", {}), str(error), *_stamp(body)))
        if not config.keep_pods:
            api.sandboxes.delete(execution.namespace, sandbox)
        return
    created: dict[str, Any] = {"podName": sandbox}
    resolved_addresses = egress.pinned_addresses(pinned)
    if resolved_addresses:
        created["resolvedAddresses"] = resolved_addresses  # as pinned now, also after a resume
    api.executions.patch_status(execution.namespace, execution.name, created)
    _announce(body, milestones.sandbox_created(sandbox))


def watch(api: ClusterApi, config: OperatorConfig, body: Mapping[str, Any]) -> None:
    """Catches what pod events cannot: start deadlines, vanished pods, missed events, TTL."""
    current = body.get("status", {})
    execution = execution_ref(body)
    if status.is_terminal(current.get("phase")):
        ttl = body.get("spec", {}).get("ttlSecondsAfterFinished")
        if status.ttl_expired(current, ttl, _now()):
            api.executions.delete(execution.namespace, execution.name)
        return
    pod_name = current.get("podName")
    if pod_name:
        sync_with_pod(api, config, execution, api.sandboxes.read_pod(execution.namespace, pod_name))


def sync_with_pod(
    api: ClusterApi, config: OperatorConfig, execution: ExecutionRef, pod: Mapping[str, Any] | None
) -> None:
    """_sync_once, again on a fresh read when the Execution changed between its read and its patch
    (409): Kopf never retries an event handler, and the timer would only try seconds later."""
    for attempt in range(1, SYNC_ATTEMPTS + 1):
        try:
            _sync_once(api, config, execution, pod)
            return
        except ApiError as error:
            if error.status != CONFLICT or attempt == SYNC_ATTEMPTS:
                raise


def _sync_once(api: ClusterApi, config: OperatorConfig, execution: ExecutionRef, pod: Mapping[str, Any] | None) -> None:
    """Writes what the pod (or its absence) says into the Execution, then removes a finished
    sandbox. Reads the Execution afresh and patches only that version of it."""
    latest = api.executions.read(execution.namespace, execution.name)
    if latest is None or latest["metadata"]["uid"] != execution.uid:
        metrics.forget(execution.uid)
        return  # The owner is gone; garbage collection removes the pod.
    finished = status.is_terminal(latest.get("status", {}).get("phase"))
    if not finished:
        patch = _status_from_pod(api, config, latest, pod)
        if patch is None:
            return
        _write_status(api, latest, patch, resource_version=latest["metadata"]["resourceVersion"])
        finished = status.is_terminal(patch["phase"])
    being_deleted = pod is not None and pod["metadata"].get("deletionTimestamp")
    if finished and pod is not None and not being_deleted and not config.keep_pods:
        api.sandboxes.delete(execution.namespace, pod["metadata"]["name"])


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
    return status.from_pod(current, pod, report, config, *_stamp(latest))


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


def execution_ref(body: Mapping[str, Any]) -> ExecutionRef:
    metadata = body["metadata"]
    return ExecutionRef(metadata["namespace"], metadata["name"], metadata["uid"])


def _stamp(body: Mapping[str, Any]) -> tuple[datetime, int]:
    """Now and the generation a status patch is computed from."""
    generation: int = body["metadata"].get("generation", 1)
    return _now(), generation


def _now() -> datetime:
    return datetime.now(UTC)
