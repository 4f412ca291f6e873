"""The queue in front of the sandboxes: decides under a lock which Executions start, then starts them."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from kopf._cogs.structs.references import NamespaceName, match_namespace

from codeexec import lifecycle, metrics, queueing
from codeexec.api import ApiError, ClusterApi
from codeexec.builders import ExecutionRef
from codeexec.config import OperatorConfig
from codeexec.queueing import Entry, Requests, State

# The timers of all queued Executions together decide at most this often (a safety net: creations and
# finished runs trigger a decision at once).
TIMER_ROUND_SECONDS = 1.0
# A namespace whose quota refused a sandbox is tried again after this, or when one of its sandboxes finishes.
QUOTA_RETRY_SECONDS = 10.0
# A queued Execution's position is rewritten at most this often: each write is an API call and a watch
# event for every client, and a burst moves every position every second.
POSITION_REFRESH_SECONDS = 60.0
# A finished Execution's pod holds its room until the kubelet has stopped it (its phase ends, or it is
# deleted); without either event (missed, or kept pods) the room counts as free after this.
RELEASE_SECONDS = 60.0


@dataclass(frozen=True)
class Snapshot:
    """The Kopf indexes a decision reads, taken when it is made: the queue's entries, and the pool pods
    ready to be claimed per (namespace, template hash)."""

    entries: Callable[[], list[Entry]]
    warm_ready: Callable[[], Mapping[tuple[str, str], int]]


class Dispatcher:
    """The queue's decisions and what this process did since the index last showed it: Executions it
    accepted, started or saw finish (the index lags the API by a watch event), namespaces refused by their
    quota, and the positions of the last decision. Everything else comes from the index (cluster state)."""

    def __init__(self, api: ClusterApi, config: OperatorConfig) -> None:
        self._api = api
        self._config = config
        self._lock = threading.Lock()
        self._local: dict[str, State] = {}
        self._refused: dict[str, tuple[str, float]] = {}  # namespace → (the API's message, when)
        self._waiting: dict[str, queueing.Waiting] = {}
        self._written: dict[str, float] = {}  # uid → when its position was last written
        self._ending: dict[str, tuple[Entry, float]] = {}  # finished, pod not stopped yet → (entry, since when)
        self._entries: dict[str, Entry] = {}  # as of the last decision
        # uid → the pool template an accepted Execution fits (known from its plan at acceptance; after a
        # restart, queued ones wait for capacity like any, and still take a ready pool pod when they start).
        self._warm_templates: dict[str, str] = {}
        self._last_timer_round = 0.0
        self._backlog = 0  # Round.backlog of the last decision
        self._yielding = False  # whether the pools were last told of a backlog (backlog_turned)

    def start(self, body: kopf.Body, logger: kopf.Logger, snapshot: Snapshot) -> None:
        """A new Execution is validated and queued (or started at once); after a restart, an accepted one
        just takes its place in the queue again."""
        metrics.track(body["metadata"]["uid"], body.get("status", {}).get("phase"))
        current = body.get("status", {})
        if current.get("podName"):
            return  # Its pod was created before: never start a second run.
        if current.get("phase") is None:
            self._accept(body, logger, snapshot)
        else:
            self.dispatch(logger, snapshot)

    def _accept(self, body: kopf.Body, logger: kopf.Logger, snapshot: Snapshot) -> None:
        admitted = lifecycle.admit_new(self._api, self._config, body, logger)
        if admitted is None:
            return
        plan = admitted[0]
        accepted = dataclasses.replace(
            queueing.entry(body, self._config),
            state=State.WAITING,
            requests=Requests(plan.cpu_millis, plan.memory_bytes),
            warm_template=lifecycle.warm_template(self._api, self._config, admitted),
        )
        with self._lock:
            decision = self._decide(snapshot, accepted)
            waiting = decision.waiting.get(accepted.uid)
            # Inside the lock: no other decision may start it before its Pending is written.
            lifecycle.mark_pending(self._api, body, admitted, waiting)
            self._mark(decision)
            if accepted.warm_template is not None:
                self._warm_templates[accepted.uid] = accepted.warm_template
            if waiting is not None:
                self._local[accepted.uid] = State.WAITING
                self._written[accepted.uid] = time.monotonic()
        self._carry_out(decision, logger, {accepted.uid: admitted})

    def dispatch(self, logger: kopf.Logger, snapshot: Snapshot, *, timer: bool = False) -> None:
        """Starts what the queue lets start now. From timers (`timer`), at most once per TIMER_ROUND_SECONDS."""
        with self._lock:
            now = time.monotonic()
            if timer:
                if now - self._last_timer_round < TIMER_ROUND_SECONDS:
                    return
                self._last_timer_round = now
            decision = self._decide(snapshot)
            self._mark(decision)
        self._carry_out(decision, logger)

    def finished(self, execution: ExecutionRef, *, pod_stopped: bool) -> None:
        """Its final phase is written. Its sandbox holds its room on the node until the pod has stopped
        (the scheduler counts it until then): `released` frees it."""
        with self._lock:
            self._local[execution.uid] = State.FINISHED
            known = self._entries.get(execution.uid)
            if known is not None and not pod_stopped:
                self._ending[execution.uid] = (known, time.monotonic())
            self._refused.pop(execution.namespace, None)

    def released(self, execution: ExecutionRef) -> None:
        """Its pod has stopped or is gone: the room is free for the next in the queue."""
        with self._lock:
            self._ending.pop(execution.uid, None)
            self._refused.pop(execution.namespace, None)

    def backlog(self) -> int:
        """How many queued Executions waited only for room on the nodes at the last decision: while any do, the
        warm pools keep no idle pods (their room goes to the queue)."""
        return self._backlog

    def backlog_turned(self) -> bool:
        """True once each time a backlog started or ended since the last call: then every pool reconciles (a
        settled pool has no timer to notice by itself)."""
        with self._lock:
            yielding = self._backlog > 0
            if yielding == self._yielding:
                return False
            self._yielding = yielding
            return True

    def launched(self, uid: str) -> bool:
        """This process created its sandbox, and the index does not show that yet."""
        return self._local.get(uid) == State.STARTED

    def refresh_position(self, body: Mapping[str, Any]) -> None:
        """Writes a queued Execution's position when the last decision moved it (at most every
        POSITION_REFRESH_SECONDS)."""
        uid = body["metadata"]["uid"]
        waiting = self._waiting.get(uid)
        if waiting is None or self._local.get(uid, State.NEW) > State.WAITING:
            return
        if waiting.position == body.get("status", {}).get("queuePosition"):
            return
        now = time.monotonic()
        if now - self._written.get(uid, -POSITION_REFRESH_SECONDS) < POSITION_REFRESH_SECONDS:
            return
        self._written[uid] = now
        lifecycle.write_position(self._api, body, waiting)

    def _decide(self, snapshot: Snapshot, accepted: Entry | None = None) -> queueing.Round:
        """One decision over the index (taken now, under the lock) and what this process knows beyond it."""
        indexed = [
            self._with_template(item) for item in snapshot.entries() if accepted is None or item.uid != accepted.uid
        ]
        if accepted is not None:
            indexed.append(accepted)
        known = {item.uid for item in indexed}
        self._warm_templates = {uid: template for uid, template in self._warm_templates.items() if uid in known}
        # Forget what the index caught up with, and Executions it no longer has (finished or deleted).
        for item in indexed:
            if self._local.get(item.uid, State.NEW) <= item.state:
                self._local.pop(item.uid, None)
        self._local = {uid: state for uid, state in self._local.items() if uid in known}
        self._written = {uid: when for uid, when in self._written.items() if uid in known}
        now = time.monotonic()
        self._ending = {
            uid: (item, since) for uid, (item, since) in self._ending.items() if now - since < RELEASE_SECONDS
        }
        stopping = [dataclasses.replace(item, state=State.STARTED) for item, _ in self._ending.values()]
        entries = [item for item in queueing.merge(indexed, self._local) if item.uid not in self._ending] + stopping
        self._refused = {ns: refusal for ns, refusal in self._refused.items() if now - refusal[1] < QUOTA_RETRY_SECONDS}
        self._entries = {item.uid: item for item in entries}
        capacity, pooled = self._capacity()
        decision = queueing.plan_round(
            entries,
            capacity,
            queueing.Limits.of(self._config),
            datetime.now(UTC),
            {namespace: message for namespace, (message, _) in self._refused.items()},
            snapshot.warm_ready(),
            pooled,
        )
        self._waiting = decision.waiting
        self._backlog = decision.backlog
        metrics.QUEUED.set(len(decision.waiting))
        return decision

    def _with_template(self, item: Entry) -> Entry:
        template = self._warm_templates.get(item.uid)
        return item if template is None else dataclasses.replace(item, warm_template=template)

    def _mark(self, decision: queueing.Round) -> None:
        """Until the index shows it: what starts holds capacity, what expired is gone."""
        for item in decision.start:
            self._local[item.uid] = State.STARTED
        for item in decision.expired:
            self._local[item.uid] = State.FINISHED

    def _capacity(self) -> tuple[Requests, Requests]:
        """What the nodes have free for this operator's sandboxes (none of them counted), and what the idle pool
        pods of its namespaces hold besides: room the pools yield while the queue waits for room."""
        nodes, _ = self._api.facts.network_objects()
        pods = self._api.facts.pods()
        free = queueing.free_capacity(nodes, pods, self._ours)
        without_pools = queueing.free_capacity(
            nodes, pods, lambda pod: self._ours(pod) or (queueing.is_idle_pool_pod(pod) and self._served(pod))
        )
        return free, without_pools - free

    def _ours(self, pod: Mapping[str, Any]) -> bool:
        # A sandbox in a namespace this operator serves is counted exactly from the queue; others' sandboxes
        # (another release's operator) are counted like any pod.
        return queueing.is_sandbox(pod) and self._served(pod)

    def _served(self, pod: Mapping[str, Any]) -> bool:
        """The pod is in a namespace this operator serves: Kopf's own matching of the namespace patterns."""
        namespace: str = pod["metadata"].get("namespace") or ""
        patterns = self._config.namespaces
        return not patterns or any(match_namespace(NamespaceName(namespace), p) for p in patterns)

    def _carry_out(
        self, decision: queueing.Round, logger: kopf.Logger, admitted: Mapping[str, lifecycle.Admitted] | None = None
    ) -> None:
        """Outside the lock (API calls): expires and launches what the decision said (`admitted`: plans made
        a moment ago, by uid, which need not be made again). A launch that fails puts the Execution back in
        the queue; the next decision tries again."""
        for item in decision.expired:
            try:
                lifecycle.expire(self._api, self._config, _ref(item))
            except ApiError as error:
                logger.warning(f"queue deadline of {item.namespace}/{item.name} not recorded yet: {error}")
                self._forget(item.uid)
        for item in decision.start:
            if item.namespace in self._refused:
                self._forget(item.uid)  # refused a moment ago in this same decision
                continue
            try:
                outcome, message = lifecycle.launch(
                    self._api, self._config, _ref(item), logger, (admitted or {}).get(item.uid)
                )
            except (ApiError, kopf.TemporaryError) as error:
                logger.warning(f"sandbox of {item.namespace}/{item.name} not created yet: {error}")
                self._forget(item.uid)
                continue
            with self._lock:
                if outcome is lifecycle.Launch.REFUSED:
                    self._local.pop(item.uid, None)
                    self._refused[item.namespace] = (message, time.monotonic())
                elif outcome is lifecycle.Launch.ENDED:
                    self._local[item.uid] = State.FINISHED

    def _forget(self, uid: str) -> None:
        with self._lock:
            self._local.pop(uid, None)


def _ref(item: Entry) -> ExecutionRef:
    return ExecutionRef(item.namespace, item.name, item.uid)
