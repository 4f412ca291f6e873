"""The warm path, pure: which Executions a pre-started pool pod may serve, which pod, its claim patch, its request."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from codeexec.builders import ExecutionRef, labels
from codeexec.config import OperatorConfig
from codeexec.egress import PinnedHost
from codeexec.status import parse_time, rfc3339
from codeexec.validation import Plan
from codeexec.vocabulary import CLAIMED_AT_ANNOTATION
from codeexec_runner import contract


def fits(plan: Plan, pinned: Sequence[PinnedHost]) -> bool:
    """Whether a warm pod can serve the Execution exactly as a cold one would. Not with allowed domains or
    bindings: a pool pod's NetworkPolicy denies all egress, and an allowance added at claim time (to the
    domains, or to the broker) could not be proven in force before the code starts. Not with environment
    variables an interpreter reads at its start."""
    env = {var.name: var.value for var in plan.spec.env}
    return not pinned and not plan.spec.bindings and contract.warm_compatible_env(env)


def ready_candidates(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The idle pool pods that may be offered, oldest first: Running, Ready (the runner saw the NetworkPolicy
    in force and the interpreter is up), not being deleted."""
    ready = [
        pod
        for pod in pods
        if pod.get("status", {}).get("phase") == "Running"
        and not pod["metadata"].get("deletionTimestamp")
        and _condition(pod, "Ready")
    ]
    return sorted(ready, key=lambda pod: (pod["metadata"].get("creationTimestamp") or "", pod["metadata"]["name"]))


def claim_patch(
    pod: Mapping[str, Any],
    execution: ExecutionRef,
    owner: Mapping[str, Any],
    plan: Plan,
    config: OperatorConfig,
    now: datetime,
) -> dict[str, Any]:
    """A merge patch that makes the pool pod the Execution's alone: only valid on the version read (a pod
    claimed or changed meanwhile fails with 409), labelled and owned like a cold sandbox (the pool stops
    counting it, deleting the pool no longer deletes it), with the cold pod's deadline backstop counted from
    now (activeDeadlineSeconds counts from the pod's start, and may only be set once or lowered)."""
    metadata = pod["metadata"]
    started = pod.get("status", {}).get("startTime") or metadata.get("creationTimestamp")
    age = max(0, math.ceil((now - parse_time(started)).total_seconds())) if started else 0
    return {
        "metadata": {
            "resourceVersion": metadata["resourceVersion"],
            "labels": labels(execution),
            "annotations": {CLAIMED_AT_ANNOTATION: rfc3339(now)},
            "ownerReferences": [dict(owner)],
        },
        "spec": {"activeDeadlineSeconds": age + plan.timeout_seconds + config.active_deadline_grace_seconds},
    }


def request(plan: Plan) -> bytes:
    """The one line the claimed pod's runner reads on its stdin: what a cold sandbox gets from /code."""
    spec = plan.spec
    body: contract.WarmRequestDict = {
        "fileName": plan.runtime.file_name,
        "code": spec.code,
        "input": spec.input,
        "stdin": spec.stdin or "",
        "env": {var.name: var.value for var in spec.env},
        "args": list(spec.args),
        "timeoutSeconds": plan.timeout_seconds,
    }
    return json.dumps(body).encode("ascii") + b"\n"


def _condition(pod: Mapping[str, Any], kind: str) -> bool:
    return any(
        condition.get("type") == kind and condition.get("status") == "True"
        for condition in pod.get("status", {}).get("conditions") or []
    )
