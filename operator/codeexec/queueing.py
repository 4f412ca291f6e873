"""The execution queue's decisions without I/O: who waits, in which order, who starts now, what fits the nodes."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from codeexec.config import OperatorConfig
from codeexec.validation import Rejection, format_cpu, format_memory, parse_cpu, parse_memory, resolve_queue_timeout
from codeexec.vocabulary import EXECUTION_UID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, POOL_LABEL, Phase

# Whatever a pod ended as, the scheduler no longer counts its requests.
_ENDED_POD_PHASES = frozenset({"Succeeded", "Failed"})
# Refusals of a pod create that say the namespace cannot take it now, not that the sandbox is bad (HTTP 403;
# 422 from some LimitRange checks): its ResourceQuota or LimitRange (quota.go, limitranger.go), or its default
# ServiceAccount not created yet (a new namespace, a busy controller-manager: serviceaccount admission).
_QUOTA_STATUSES = (403, 422)
_QUOTA_MESSAGES = re.compile(
    r"exceeded quota|failed quota|(usage|ratio) per (Container|Pod)|error looking up service account"
)
_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[a-zA-Z]*)$")


class State(enum.IntEnum):
    """How far an Execution got, as far as the queue cares; it only ever moves up."""

    NEW = 0  # not accepted yet: not in the queue
    WAITING = 1  # accepted (Pending), no sandbox yet: in the queue
    STARTED = 2  # its sandbox was created: holds capacity
    FINISHED = 3  # terminal: holds nothing


@dataclass(frozen=True, order=True)
class Requests:
    """CPU (millicores) and memory (bytes) of a sandbox, or free on the nodes."""

    cpu_millis: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Requests) -> Requests:
        return Requests(self.cpu_millis + other.cpu_millis, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Requests) -> Requests:
        return Requests(self.cpu_millis - other.cpu_millis, self.memory_bytes - other.memory_bytes)

    def fits(self, free: Requests) -> bool:
        return self.cpu_millis <= free.cpu_millis and self.memory_bytes <= free.memory_bytes

    def __str__(self) -> str:
        return f"cpu {format_cpu(self.cpu_millis)}, memory {format_memory(self.memory_bytes)}"


@dataclass(frozen=True)
class Entry:
    """One unfinished Execution as the queue sees it (the value of the Kopf index)."""

    namespace: str
    name: str
    uid: str
    created: datetime
    state: State
    requests: Requests
    queue_deadline: datetime
    position: int | None = None  # status.queuePosition as last written
    warm_template: str | None = None  # the template hash of the pool pods that fit it (warm.fits); None: none do

    def order(self) -> tuple[datetime, str, str]:
        """Creation order: creationTimestamp has whole seconds, so name then uid break ties."""
        return self.created, self.name, self.uid


@dataclass(frozen=True)
class Limits:
    max_running: int = 0  # 0: only capacity bounds the cluster
    max_running_per_namespace: int = 0  # 0: no limit per namespace

    @classmethod
    def of(cls, config: OperatorConfig) -> Limits:
        return cls(config.max_running, config.max_running_per_namespace)


@dataclass(frozen=True)
class Waiting:
    """Where a queued Execution stands (1-based) and what it waits for."""

    position: int
    message: str


@dataclass(frozen=True)
class Round:
    """One dispatch decision: what starts now (in order), what ran out of queue time, where the rest wait, and
    how many of them wait only for room on the nodes (`backlog`: not for a limit, a quota, or nodes too small):
    while any do, the warm pools yield the room their idle pods hold (warmpools.PoolKeeper)."""

    start: tuple[Entry, ...] = ()
    expired: tuple[Entry, ...] = ()
    waiting: dict[str, Waiting] = field(default_factory=dict)
    backlog: int = 0


def entry(body: Mapping[str, Any], config: OperatorConfig) -> Entry:
    """The queue's view of an Execution's body: its state, planned requests and queue deadline."""
    metadata = body["metadata"]
    current = body.get("status") or {}
    created = datetime.fromisoformat(metadata["creationTimestamp"])
    state = State.NEW
    if current.get("podName"):
        state = State.STARTED
    elif current.get("phase") == Phase.PENDING:
        state = State.WAITING
    return Entry(
        namespace=metadata["namespace"],
        name=metadata["name"],
        uid=metadata["uid"],
        created=created,
        state=state,
        requests=_accepted_requests(current.get("resources"), config),
        queue_deadline=queue_deadline(body, config),
        position=current.get("queuePosition"),
    )


def queue_deadline(body: Mapping[str, Any], config: OperatorConfig) -> datetime:
    """Creation plus spec.queueTimeoutSeconds (or the operator's default)."""
    created = datetime.fromisoformat(body["metadata"]["creationTimestamp"])
    requested = (body.get("spec") or {}).get("queueTimeoutSeconds")
    seconds = resolve_queue_timeout(requested if isinstance(requested, int) else None, config)
    if isinstance(seconds, Rejection):  # never accepted, so never queued; bounded all the same
        seconds = config.max_queue_timeout_seconds
    return created + timedelta(seconds=seconds)


def _accepted_requests(resources: Mapping[str, Any] | None, config: OperatorConfig) -> Requests:
    # status.resources is written at acceptance; an Execution accepted before the queue existed has
    # none and is counted with the operator's defaults (a misjudgment only delays: it waits as Queued).
    resources = resources or {}
    try:
        return Requests(
            parse_cpu(resources.get("cpu") or config.default_cpu),
            parse_memory(resources.get("memory") or config.default_memory),
        )
    except ValueError:
        return Requests(parse_cpu(config.default_cpu), parse_memory(config.default_memory))


def merge(indexed: Iterable[Entry], local: Mapping[str, State]) -> list[Entry]:
    """The index's entries, each moved up to what this process knows it did since (the index lags the
    API by a watch event); entries the index no longer has are gone (finished or deleted)."""
    merged = []
    for item in indexed:
        state = max(item.state, local.get(item.uid, State.NEW))
        merged.append(item if state == item.state else _with_state(item, state))
    return merged


def _with_state(item: Entry, state: State) -> Entry:
    return dataclasses.replace(item, state=state)


def plan_round(
    entries: Iterable[Entry],
    capacity: Requests,
    limits: Limits,
    now: datetime,
    refused: Mapping[str, str] | None = None,
    warm_ready: Mapping[tuple[str, str], int] | None = None,
    pooled: Requests = Requests(),
) -> Round:
    """Which waiting Executions start now. `capacity`: what the nodes have free for our sandboxes (none of
    them counted); `refused`: namespaces whose ResourceQuota refused a sandbox lately → the API's message;
    `warm_ready`: (namespace, template hash) → pool pods ready to be claimed; `pooled`: what idle pool pods of
    our namespaces hold besides (not in `capacity`; the pools yield it while the queue waits for room). An
    Execution that a ready pool pod fits needs no free capacity (the pool's pod holds its room already), only
    the limits' leave.

    Fair: the next start goes to the namespace with the fewest running sandboxes (counting this round's),
    ties to the oldest head; its head starts if the limits allow. A head that does not fit the free capacity
    stops the round (nothing overtakes it, so a big Execution is never starved); a namespace at its limit or
    refused by its quota is skipped without blocking the others."""
    refused = refused or {}
    unclaimed = Counter(warm_ready or {})
    entries = list(entries)
    running = [item for item in entries if item.state == State.STARTED]
    queued = sorted((item for item in entries if item.state == State.WAITING), key=Entry.order)
    expired = tuple(item for item in queued if now >= item.queue_deadline)
    queues = _by_namespace(item for item in queued if now < item.queue_deadline)
    counts = Counter(item.namespace for item in running)
    free = capacity - sum((item.requests for item in running), Requests())
    total = len(running)
    skipped: dict[str, str] = {}  # namespace → why it waits
    too_big: dict[str, str] = {}  # uid → why it waits
    blocked = ""  # why the whole queue waits
    short_of_room = False  # it waits for room on the nodes (not for a limit)
    start: list[Entry] = []
    while True:
        for name in queues:
            if name in refused:
                skipped[name] = refused[name]
            elif limits.max_running_per_namespace and counts[name] >= limits.max_running_per_namespace:
                skipped[name] = (
                    f"waiting for capacity: {counts[name]} of {limits.max_running_per_namespace} "
                    f"sandboxes running in namespace {name}"
                )
        namespace = _next_namespace(queues, counts, skipped)
        if namespace is None:
            break
        head = queues[namespace][0]
        if limits.max_running and total >= limits.max_running:
            blocked = f"waiting for capacity: {total} of {limits.max_running} sandboxes running in the cluster"
            break
        warm_key = (head.namespace, head.warm_template or "")
        if unclaimed[warm_key] > 0:
            unclaimed[warm_key] -= 1
        elif head.requests.fits(free):
            free -= head.requests
        elif head.requests.fits(capacity + pooled):
            # Room frees as our sandboxes end and as the pools' idle pods yield theirs (Round.backlog).
            blocked = f"waiting for capacity: the next sandbox needs {head.requests}; free: {_free_text(free)}"
            short_of_room = True
            break
        else:
            # Even with none of our sandboxes or pool pods there it would not fit: waiting for ours cannot help,
            # so it holds up nobody (it starts if the nodes grow or their other pods go, else ends at its deadline).
            too_big[head.uid] = f"waiting for capacity: needs {head.requests}; the nodes have {_free_text(capacity)}"
            queues[namespace].popleft()
            continue
        start.append(queues[namespace].popleft())
        counts[namespace] += 1
        total += 1
    gone = {item.uid for item in (*start, *expired)}
    rest = [item for item in queued if item.uid not in gone]
    waiting = {}
    backlog = 0
    for position, item in enumerate(queue_order(rest, counts), start=1):
        message = too_big.get(item.uid) or skipped.get(item.namespace) or blocked or "waiting for capacity"
        waiting[item.uid] = Waiting(position, message)
        if short_of_room and item.uid not in too_big and item.namespace not in skipped:
            backlog += 1
    return Round(tuple(start), expired, waiting, backlog)


def queue_order(waiting: Iterable[Entry], running_per_namespace: Mapping[str, int]) -> list[Entry]:
    """The order the fair rule starts the waiting Executions in, limits aside: their queue positions."""
    queues = _by_namespace(sorted(waiting, key=Entry.order))
    counts = Counter(running_per_namespace)
    order = []
    while (namespace := _next_namespace(queues, counts, {})) is not None:
        order.append(queues[namespace].popleft())
        counts[namespace] += 1
    return order


def _by_namespace(ordered: Iterable[Entry]) -> dict[str, deque[Entry]]:
    queues: dict[str, deque[Entry]] = {}
    for item in ordered:
        queues.setdefault(item.namespace, deque()).append(item)
    return queues


def _next_namespace(queues: Mapping[str, deque[Entry]], counts: Counter[str], skipped: Mapping[str, str]) -> str | None:
    """The namespace with the fewest running, then the oldest head; None when none may start."""
    candidates = [namespace for namespace, queue in queues.items() if queue and namespace not in skipped]
    if not candidates:
        return None
    return min(candidates, key=lambda namespace: (counts[namespace], queues[namespace][0].order()))


def free_capacity(
    nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]], ours: Callable[[Mapping[str, Any]], bool]
) -> Requests:
    """Allocatable CPU and memory of the Ready, schedulable nodes minus the requests of the pods placed there
    that are not `ours`: what our sandboxes may use together. Pods not placed yet hold nothing: they compete
    with our sandboxes for the room that frees (counting them, a backlog of other pods would starve the queue).
    Summed over nodes, not per node: on several nodes a sandbox may still not fit any one of them (the
    scheduler then says so, and it waits)."""
    usable = {node["metadata"]["name"]: node for node in nodes if _usable(node)}
    total = Requests()
    for node in usable.values():
        allocatable = node.get("status", {}).get("allocatable", {})
        total += Requests(_cpu_millis(allocatable.get("cpu")), _bytes(allocatable.get("memory")))
    for pod in pods:
        placed = pod.get("spec", {}).get("nodeName")
        if ours(pod) or pod.get("status", {}).get("phase") in _ENDED_POD_PHASES or placed not in usable:
            continue
        total -= pod_requests(pod)
    return total


def is_sandbox(pod: Mapping[str, Any]) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and EXECUTION_UID_LABEL in labels


def is_idle_pool_pod(pod: Mapping[str, Any]) -> bool:
    """A warm pool's pod not claimed by an Execution (the claim adds the Execution's uid label)."""
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and POOL_LABEL in labels and EXECUTION_UID_LABEL not in labels


def pod_requests(pod: Mapping[str, Any]) -> Requests:
    """What the scheduler reserves for a pod: its containers' requests (or an init container's, if larger)
    plus the runtime's overhead."""
    spec = pod.get("spec", {})
    containers = sum((_container_requests(c) for c in spec.get("containers") or []), Requests())
    for init in spec.get("initContainers") or []:
        requests = _container_requests(init)
        containers = Requests(
            max(containers.cpu_millis, requests.cpu_millis), max(containers.memory_bytes, requests.memory_bytes)
        )
    overhead = spec.get("overhead") or {}
    return containers + Requests(_cpu_millis(overhead.get("cpu")), _bytes(overhead.get("memory")))


def is_quota_refusal(status: int | None, message: str) -> bool:
    """A pod create refused by the namespace's ResourceQuota or LimitRange (or before its default
    ServiceAccount exists): wait, do not fail."""
    return status in _QUOTA_STATUSES and _QUOTA_MESSAGES.search(message) is not None


def _container_requests(container: Mapping[str, Any]) -> Requests:
    resources = container.get("resources") or {}
    # Without requests, the API server defaults them to the limits.
    requests = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return Requests(_cpu_millis(requests.get("cpu")), _bytes(requests.get("memory")))


def _usable(node: Mapping[str, Any]) -> bool:
    if node.get("spec", {}).get("unschedulable"):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _quantity(text: Any) -> Decimal:
    """Any Kubernetes quantity ("100m", "1.5", "128974848", "129e6", "24479284Ki") as a number; unreadable: 0."""
    match = _QUANTITY.match(str(text or "0").strip())
    if match is None:
        return Decimal(0)
    number, suffix = match.groups()
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIXES[suffix]
    except (InvalidOperation, KeyError):
        return Decimal(0)


def _cpu_millis(text: Any) -> int:
    return int((_quantity(text) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def _bytes(text: Any) -> int:
    return int(_quantity(text).to_integral_value(rounding="ROUND_CEILING"))


def _free_text(free: Requests) -> str:
    return str(Requests(max(free.cpu_millis, 0), max(free.memory_bytes, 0)))
