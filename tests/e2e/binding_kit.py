"""What the e2e modules of bindings (test_bindings.py, test_bindings_ai.py) share: the release's names and small
steps on the cluster."""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

from tests.e2e.executions import apply, get_execution, wait_finished
from tests.e2e.kube import REPO, kubectl, kubectl_json, wait_until

CHART = REPO / "charts/code-exec"
RELEASE = "code-exec"
BROKER = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=broker"


def create_objects(*objects: dict[str, Any]) -> None:
    kubectl("create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def only_pod(namespace: str, selector: str) -> dict[str, Any]:
    (pod,) = kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return pod  # type: ignore[no-any-return]


def ready_pod(namespace: str, selector: str) -> dict[str, Any] | None:
    pods = kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    ready = [
        pod
        for pod in pods
        if not pod["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
    ]
    return ready[0] if len(ready) == 1 and len(pods) == 1 else None


def succeeded(execution: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = execution["status"]
    assert (status["phase"], status.get("exitCode")) == ("Succeeded", 0), status
    return status


def run_one(work: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The status of one Execution run to success."""
    apply(work, manifest)
    return succeeded(wait_finished(work, manifest["metadata"]["name"]))


def binding_usage(work: str, name: str, binding: str, **expected: int) -> dict[str, Any]:
    """The Execution's status.bindings entry of `binding` once the broker's (throttled) write shows `expected`."""

    def written() -> dict[str, Any] | None:
        entries = get_execution(work, name)["status"].get("bindings") or []
        found = {entry["name"]: entry for entry in entries}.get(binding)
        if found and all(found.get(key) == value for key, value in expected.items()):
            return dict(found)
        return None

    try:
        return wait_until(written, 30, f"status.bindings of {name} to show {binding}: {expected}")
    except AssertionError as error:
        found = get_execution(work, name)["status"].get("bindings")
        raise AssertionError(f"{error}; status.bindings: {found}") from None


def listening(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=3).close()
    except OSError:
        return False
    return True
