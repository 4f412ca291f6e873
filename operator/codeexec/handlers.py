"""Kopf handlers: orchestrate validation, builders, API calls and status updates (no logic of their own)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf

from codeexec import admission, builders, egress, metrics, milestones, resolver, status
from codeexec.builders import ExecutionRef, PinnedHost
from codeexec.config import OperatorConfig
from codeexec.k8s import CONFLICT, ApiError, Cluster
from codeexec.models import GROUP, VERSION
from codeexec.persistence import DigestDiffBaseStorage
from codeexec.validation import Plan, Rejection, parse_runtimes, plan_execution

EXECUTIONS = (GROUP, VERSION, "executions")
API_RETRY_DELAY = 5
WATCH_INTERVAL = 5
# Tries of a pod sync whose status patch conflicts with a concurrent change of the Execution.
SYNC_ATTEMPTS = 3
# API statuses after which creating the sandbox again cannot succeed (invalid, forbidden).
PERMANENT_CREATE_ERRORS = (400, 403, 422)


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


def _unfinished(body: kopf.Body, **_: Any) -> bool:
    return not status.is_terminal(body.get("status", {}).get("phase"))


def _needs_watching(body: kopf.Body, **_: Any) -> bool:
    # Limits kopf's timer finalizer to Executions that still need the operator.
    return _unfinished(body) or body.get("spec", {}).get("ttlSecondsAfterFinished") is not None


# The filter keeps a restart from touching every finished Execution in the cluster.
@kopf.on.resume(*EXECUTIONS, when=_unfinished)
@kopf.on.create(*EXECUTIONS, when=_unfinished)
def start_execution(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Validates a new Execution and creates its sandbox: ConfigMap, NetworkPolicy, then Pod."""
    current = body.get("status", {})
    metrics.track(body["metadata"]["uid"], current.get("phase"))
    if current.get("podName"):
        return  # Its pod was created before: never start a second run.
    config, cluster = _config(memo), _cluster(memo)
    execution = _ref(body)
    sandbox = builders.child_name(execution)  # the pod's, ConfigMap's and NetworkPolicy's name
    generation = _generation(body)

    with _retry_on_api_errors():
        # The pod first, then the Execution: a sandbox removed after the first read was removed after
        # its outcome was written, which the second read then shows. Never a second pod, never a rerun.
        existing = cluster.read_pod(execution.namespace, sandbox)
        if _started_or_finished(cluster, execution):
            return
        if existing is not None:
            # Created before a restart, not yet recorded: its pod events will tell the outcome.
            _check_owned(existing, execution)
            patch = {"podName": sandbox}
            cluster.patch_execution_status(execution.namespace, execution.name, patch)
            return
        runtimes = parse_runtimes(cluster.list_runtimes())
        class_exists = not config.runtime_class or cluster.runtime_class_exists(config.runtime_class)
        planned = plan_execution(body.get("spec", {}), runtimes, config, class_exists)
        admitted = _pin_allowed_domains(cluster, config, planned)
        if isinstance(admitted, Rejection):
            # Info, not warning: the Warning Event comes from _record, with the reason.
            logger.info(f"{admitted.reason}: {admitted.message}")
            patch = status.rejected(current, admitted.reason, admitted.message, _now(), generation)
            cluster.patch_execution_status(execution.namespace, execution.name, patch)
            _record(body, current, patch)
            return
        plan, pinned = admitted
        resolved_addresses = egress.pinned_addresses(pinned)
        if current.get("phase") is None:
            # Pending goes first, so it can never overwrite what pod events report later.
            patch = status.pending(current, _now(), generation, resolved_addresses)
            cluster.patch_execution_status(execution.namespace, execution.name, patch)
            _record(body, current, patch, milestones.accepted(plan))

        probe = egress.isolation_probe(cluster.api_service())
        children = [
            (builders.configmap(execution, plan), cluster.create_configmap),
            # The NetworkPolicy exists before the pod, so the pod never runs unfenced.
            (builders.networkpolicy(execution, pinned), cluster.create_networkpolicy),
            (builders.pod(execution, plan, config, pinned, isolation_probe=probe), cluster.create_pod),
        ]
        try:
            for child, create in children:
                # Not kopf.adopt: it would copy the Execution's labels onto the pod, and a
                # user label could make other NetworkPolicies select (and open) the sandbox.
                kopf.append_owner_reference(child, owner=body)
                _check_owned(create(child), execution)
        except ApiError as error:
            if error.status not in PERMANENT_CREATE_ERRORS:
                raise
            logger.info(f"sandbox not created: {error}")
            patch = status.sandbox_not_created(current, str(error), _now(), generation)
            cluster.patch_execution_status(execution.namespace, execution.name, patch)
            _record(body, current, patch)
            if not config.keep_pods:
                cluster.delete_sandbox(execution.namespace, sandbox)
            return
        created: dict[str, Any] = {"podName": sandbox}
        if resolved_addresses:
            created["resolvedAddresses"] = resolved_addresses  # as pinned now, also after a resume
        cluster.patch_execution_status(execution.namespace, execution.name, created)
        _announce(body, milestones.sandbox_created(sandbox))


def _started_or_finished(cluster: Cluster, execution: ExecutionRef) -> bool:
    """Whether a fresh read shows the Execution's pod recorded or its outcome written (or the Execution
    gone). The event's body can be seconds old (the listing after a restart): a pod event may have
    recorded the outcome meanwhile and removed the sandbox, which must not be created again."""
    latest = cluster.read_execution(execution.namespace, execution.name)
    if latest is None or latest["metadata"]["uid"] != execution.uid:
        return True
    current = latest.get("status", {})
    return status.is_terminal(current.get("phase")) or bool(current.get("podName"))


def _pin_allowed_domains(
    cluster: Cluster, config: OperatorConfig, plan: Plan | Rejection
) -> tuple[Plan, tuple[PinnedHost, ...]] | Rejection:
    """The plan with spec.network.allowedDomains resolved and every address checked (egress.pin_domains).
    Resolved on every attempt, so pins are never older than the sandbox they go into."""
    if isinstance(plan, Rejection):
        return plan
    domains = plan.spec.network.allowed_domains if plan.spec.network else []
    if not domains:
        return plan, ()
    resolved = resolver.resolve_all(egress.parse_domain(domain)[0] for domain in domains)
    nodes, api_endpoint_slices = cluster.network_objects()
    forbidden = egress.cluster_networks(
        config.cluster_cidrs, nodes, cluster.api_service(), api_endpoint_slices, service_cidrs=cluster.service_cidrs()
    )
    pinned = egress.pin_domains(domains, resolved, forbidden, config.allowed_private_cidrs)
    return pinned if isinstance(pinned, Rejection) else (plan, pinned)


@kopf.on.event(
    "",
    "v1",
    "pods",
    labels={builders.MANAGED_BY_LABEL: builders.MANAGED_BY, builders.EXECUTION_UID_LABEL: kopf.PRESENT},
)
def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Pod changes → Execution status. The initial listing after a restart re-delivers every
    sandbox pod, so runs that finished while the operator was down are harvested too."""
    if event.get("type") == "DELETED":
        return  # watch_execution notices a pod that vanished too early.
    execution = _owner(body)
    if execution is None:
        return
    with _retry_on_api_errors():
        _sync_with_pod(_cluster(memo), _config(memo), execution, dict(body))


@kopf.timer(*EXECUTIONS, interval=WATCH_INTERVAL, idle=WATCH_INTERVAL, when=_needs_watching)
def watch_execution(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Catches what pod events cannot: start deadlines, vanished pods, missed events, TTL."""
    current = body.get("status", {})
    cluster = _cluster(memo)
    execution = _ref(body)
    with _retry_on_api_errors():
        if status.is_terminal(current.get("phase")):
            ttl = body.get("spec", {}).get("ttlSecondsAfterFinished")
            if status.ttl_expired(current, ttl, _now()):
                cluster.delete_execution(execution.namespace, execution.name)
            return
        pod_name = current.get("podName")
        if pod_name:
            pod = cluster.read_pod(execution.namespace, pod_name)
            _sync_with_pod(cluster, _config(memo), execution, pod)


def _sync_with_pod(
    cluster: Cluster,
    config: OperatorConfig,
    execution: ExecutionRef,
    pod: Mapping[str, Any] | None,
) -> None:
    """_sync_once, again on a fresh read when the Execution changed between its read and its patch
    (409): Kopf never retries an event handler, and the timer would only try seconds later."""
    for attempt in range(1, SYNC_ATTEMPTS + 1):
        try:
            _sync_once(cluster, config, execution, pod)
            return
        except ApiError as error:
            if error.status != CONFLICT or attempt == SYNC_ATTEMPTS:
                raise


def _sync_once(
    cluster: Cluster,
    config: OperatorConfig,
    execution: ExecutionRef,
    pod: Mapping[str, Any] | None,
) -> None:
    """Writes what the pod (or its absence) says into the Execution, then removes a finished
    sandbox. Reads the Execution afresh and patches only that version of it."""
    latest = cluster.read_execution(execution.namespace, execution.name)
    if latest is None or latest["metadata"]["uid"] != execution.uid:
        metrics.forget(execution.uid)
        return  # The owner is gone; garbage collection removes the pod.
    current = latest.get("status", {})
    finished = status.is_terminal(current.get("phase"))
    if not finished:
        now, generation = _now(), _generation(latest)
        if pod is None:
            patch: dict[str, Any] | None = status.pod_deleted(current, now, generation)
        else:
            report = None
            if status.sandbox_terminated(pod):
                report = cluster.read_report(execution.namespace, pod["metadata"]["name"])
            patch = status.from_pod(current, pod, report, config, now, generation)
        if patch is None:
            return
        cluster.patch_execution_status(
            execution.namespace,
            execution.name,
            patch,
            resource_version=latest["metadata"]["resourceVersion"],
        )
        _record(latest, current, patch)
        finished = status.is_terminal(patch["phase"])
    being_deleted = pod is not None and pod["metadata"].get("deletionTimestamp")
    if finished and pod is not None and not being_deleted and not config.keep_pods:
        cluster.delete_sandbox(execution.namespace, pod["metadata"]["name"])


def validate_execution(spec: kopf.Spec, memo: kopf.Memo, warnings: list[str], **_: Any) -> None:
    """Admission webhook (registered by register_webhook only when enabled): refuses a new Execution
    that start_execution would reject, with the same message; the operator still checks what gets in."""
    try:
        runtimes = parse_runtimes(_cluster(memo).list_runtimes())
    except ApiError as error:
        # Admitted: the operator validates it anyway, so an API hiccup must not block users.
        warnings.append(f"not validated against the installed Runtimes ({error}); the operator will")
        return
    refusal = admission.refusal(spec, runtimes, _config(memo))
    if refusal is not None:
        raise kopf.AdmissionError(refusal, code=422)


def register_webhook(registry: kopf.OperatorRegistry) -> None:
    """Kopf refuses to start with admission handlers but no webhook server: a local operator
    (no Service to reach it) runs without this handler."""
    kopf.on.validate(*EXECUTIONS, id=admission.WEBHOOK_ID, operations=["CREATE"], registry=registry)(validate_execution)


def _record(
    execution: Mapping[str, Any],
    current: Mapping[str, Any],
    patch: Mapping[str, Any],
    milestone: milestones.Milestone | None = None,
) -> None:
    """Metrics and an Event for a status change just written."""
    previous = current.get("phase")
    metrics.record(execution["metadata"]["uid"], execution.get("spec", {}).get("language"), previous, patch)
    _announce(execution, milestone or milestones.from_patch(previous, patch))


def _announce(execution: Mapping[str, Any], milestone: milestones.Milestone | None) -> None:
    if milestone is not None:
        body = kopf.Body(cast(kopf.RawBody, dict(execution)))
        kopf.event(body, type=milestone.type, reason=milestone.reason, message=milestone.message)


@contextlib.contextmanager
def _retry_on_api_errors() -> Iterator[None]:
    try:
        yield
    except ApiError as error:
        raise kopf.TemporaryError(str(error), delay=API_RETRY_DELAY) from error


def _check_owned(child: Mapping[str, Any], execution: ExecutionRef) -> None:
    """An object found under our name (409) must be this Execution's, not a stale one's."""
    labels = child.get("metadata", {}).get("labels") or {}
    if labels.get(builders.EXECUTION_UID_LABEL) != execution.uid:
        name = child.get("metadata", {}).get("name")
        raise kopf.TemporaryError(
            f"{child.get('kind')} {name} belongs to another Execution; waiting for it to go",
            delay=API_RETRY_DELAY,
        )


def _owner(pod: kopf.Body) -> ExecutionRef | None:
    for reference in pod.get("metadata", {}).get("ownerReferences") or []:
        if reference.get("apiVersion") == f"{GROUP}/{VERSION}" and reference.get("kind") == "Execution":
            return ExecutionRef(pod["metadata"]["namespace"], reference["name"], reference["uid"])
    return None


def _ref(body: Mapping[str, Any]) -> ExecutionRef:
    metadata = body["metadata"]
    return ExecutionRef(metadata["namespace"], metadata["name"], metadata["uid"])


def _generation(body: Mapping[str, Any]) -> int:
    generation: int = body["metadata"].get("generation", 1)
    return generation


def _config(memo: kopf.Memo) -> OperatorConfig:
    config: OperatorConfig = memo["config"]
    return config


def _cluster(memo: kopf.Memo) -> Cluster:
    cluster: Cluster = memo["cluster"]
    return cluster


def _now() -> datetime:
    return datetime.now(UTC)
