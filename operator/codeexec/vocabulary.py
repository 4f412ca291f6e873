"""The operator's Kubernetes-facing names: phases, stable reasons, condition types, Event reasons, labels, names."""

from __future__ import annotations

import enum

# The API group and version stay in models.py, next to the types the CRDs are generated from;
# Kopf's annotations and finalizer are named after the group (handlers.configure).


class Phase(enum.StrEnum):
    """Lifecycle phase of an Execution."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    REJECTED = "Rejected"


# Phases nothing moves an Execution out of.
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.TIMED_OUT, Phase.REJECTED})

# Stable reasons: status.reason, the reason of the Accepted or Finished condition, and of the Event
# announcing the final phase. Users and alerts match on them: never rename one.
ACCEPTED = "Accepted"  # Accepted=True: the spec is valid and the sandbox is being created.
COMPLETED = "Completed"  # Succeeded: the program exited with code 0.
NON_ZERO_EXIT = "NonZeroExit"  # Failed: the program exited with another code (or a signal).
TIMEOUT = "Timeout"  # TimedOut: the runner stopped the program at spec.timeoutSeconds.
DEADLINE_EXCEEDED = "DeadlineExceeded"  # TimedOut: the pod's activeDeadlineSeconds backstop ended it.
OOM_KILLED = "OOMKilled"  # Failed: the sandbox exceeded its memory limit.
INVALID_SPEC = "InvalidSpec"  # Rejected: a field is malformed, or an input above its size limit.
UNKNOWN_LANGUAGE = "UnknownLanguage"  # Rejected: spec.language names no installed Runtime or alias.
TIMEOUT_TOO_LONG = "TimeoutTooLong"  # Rejected: spec.timeoutSeconds above the Runtime's or operator's maximum.
RESOURCES_TOO_LARGE = "ResourcesTooLarge"  # Rejected: spec.resources above the Runtime's or operator's maxima.
CODE_TOO_LARGE = "CodeTooLarge"  # Rejected: spec.code above its byte limit.
RUNTIME_CLASS_MISSING = "RuntimeClassMissing"  # Failed (the cluster's fault): the gVisor RuntimeClass is absent.
POD_FAILED = "PodFailed"  # Failed: the sandbox could not be created, or its pod ended without a container state.
POD_DELETED = "PodDeleted"  # Failed: the sandbox pod went away before its outcome was recorded.
EVICTED = "Evicted"  # Failed: the kubelet evicted the sandbox pod.
IMAGE_ERROR = "ImageError"  # Failed: the sandbox image cannot be pulled.
START_TIMEOUT = "StartTimeout"  # Failed: the pod did not start within the operator's start deadline.
UNSCHEDULABLE = "Unschedulable"  # Failed: no node could take the pod within the start deadline.
REPORT_MISSING = "ReportMissing"  # Failed: no trusted runner report; output and result are unknown.
DOMAIN_NOT_ALLOWED = "DomainNotAllowed"  # Rejected: an allowed domain resolves to an address sandboxes never reach.
DOMAIN_UNRESOLVABLE = "DomainUnresolvable"  # Rejected: an allowed domain does not resolve.
NETWORK_NOT_ISOLATED = "NetworkNotIsolated"  # Failed: the NetworkPolicy was not enforced, so the code never ran.
QUEUED = "Queued"  # Pending: accepted, waiting in the queue for capacity (status.queuePosition says where).
QUEUE_TIMEOUT = "QueueTimeout"  # Failed: still queued when spec.queueTimeoutSeconds had passed since creation.
QUEUE_TIMEOUT_TOO_LONG = "QueueTimeoutTooLong"  # Rejected: spec.queueTimeoutSeconds above the operator's maximum.
BINDING_NOT_FOUND = "BindingNotFound"  # Rejected: a name in spec.bindings has no SandboxBinding in the namespace.
# Rejected: spec.bindings names some but the operator has no broker (none installed, its Service or token key missing).
BINDINGS_UNAVAILABLE = "BindingsUnavailable"

# Condition types in status.conditions.
CONDITION_ACCEPTED = "Accepted"  # True once the spec is valid; False with the rejection's reason.
CONDITION_FINISHED = "Finished"  # True once the phase is final, with the final reason.

# Kubernetes Events on the Execution, one per milestone (milestones.py).
EVENT_NORMAL = "Normal"  # Event type of progress and of success.
EVENT_WARNING = "Warning"  # Event type of every other final phase.
EVENT_ACCEPTED = "Accepted"  # Reason of the Event that names the runtime and limits chosen.
EVENT_DEQUEUED = "Dequeued"  # Reason of the Event when an Execution that waited leaves the queue.
EVENT_SANDBOX_CREATED = "SandboxCreated"  # Reason of the Event once the pod, ConfigMap and NetworkPolicy exist.
EVENT_SANDBOX_CLAIMED = "SandboxClaimed"  # Reason of the Event once a warm pool pod was claimed and has the code.
EVENT_STARTED = "Started"  # Reason of the Event once the program runs.
# The Event of the final phase has the status's reason.

# Labels on every object made for an Execution (pod, ConfigMap, NetworkPolicy).
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"  # The operator watches only pods with MANAGED_BY here.
MANAGED_BY = "code-exec"
NAME_LABEL = "app.kubernetes.io/name"  # Always SANDBOX_NAME: what the object is.
SANDBOX_NAME = "code-exec-sandbox"
EXECUTION_LABEL = "codeexec.io/execution"  # The Execution's name (hashed when too long for a label), for people.
# The Execution's uid: the NetworkPolicy selects the pod by it and the operator checks ownership by it;
# only the operator sets it, so no user label can select a sandbox.
EXECUTION_UID_LABEL = "codeexec.io/execution-uid"

# Warm pools (warmpools.py). Pool pods carry POOL_LABEL and TEMPLATE_HASH_LABEL; an idle one has no
# EXECUTION_UID_LABEL: the claim of a pod by an Execution adds that label (and takes the pod out of the pool).
POOL_LABEL = "codeexec.io/pool"  # The WarmPool's name: the namespace's deny-all NetworkPolicy selects pods by it.
# builders.warm_template_hash of the pod's spec: a pod fits an Execution whose plan hashes alike, and a pool
# deletes idle pods whose hash is not its own (a Runtime's image changed: the pool rolls).
TEMPLATE_HASH_LABEL = "codeexec.io/template-hash"
# The one NetworkPolicy per namespace that fences every pool pod (no ingress, no egress). Owned by nothing:
# a claimed pod outlives its pool and must stay fenced; it stays when the pools go.
WARM_NETWORKPOLICY = "codeexec-warm-sandboxes"

# WarmPool status: one condition, Ready, with a stable reason. Users and alerts match on them.
CONDITION_READY = "Ready"
POOL_READY = "Ready"  # Ready=True: every wanted pod is started and ready to be claimed.
POOL_FILLING = "Filling"  # Ready=False: pods are being created or starting.
REPLICAS_TOO_LARGE = "ReplicasTooLarge"  # Ready=False: spec.replicas above the operator's maximum; it keeps that many.
POOL_CREATE_REFUSED = "CreateRefused"  # Ready=False: the quota or LimitRange refused a pod; retried later.
# Ready=False, the pool keeps no idle pods: Executions wait in the queue for room on the nodes, and get the pool's.
POOL_QUEUE_BACKLOG = "QueueBacklog"
# Ready=False, the pool keeps no pods: its spec.runtime names no installed Runtime or alias. RESOURCES_TOO_LARGE,
# INVALID_SPEC and RUNTIME_CLASS_MISSING (above) mean the same for a pool as for an Execution.
UNKNOWN_RUNTIME = "UnknownRuntime"

# SandboxBinding status: the Ready condition (CONDITION_READY) with a stable reason; INVALID_SPEC (above) when its
# spec fails the model.
BINDING_READY = "Ready"  # Ready=True: the broker can serve it (as far as the operator can tell).
SECRET_MISSING = "SecretMissing"  # Ready=False: the Secret or key of a postgres binding's dsnSecretRef is absent.

# The sandbox pod's one container: status reads its state, the report is read from its log.
SANDBOX_CONTAINER = "sandbox"


class Sandbox(enum.StrEnum):
    """status.sandbox: which path gave the Execution its pod."""

    WARM = "warm"  # a pre-started pod of a WarmPool, claimed for this Execution alone
    COLD = "cold"  # a pod created for this Execution


# On a claimed warm pod: when the claim happened (RFC 3339), so the Execution's startedAt is not the pod's start.
CLAIMED_AT_ANNOTATION = "codeexec.io/claimed-at"
