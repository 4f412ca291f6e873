"""SandboxBindings: which an Execution may use and how its sandbox reaches the broker (pure), and each binding's
status (Ready, inUse, usedBy) kept from Execution and SandboxBinding events (BindingKeeper)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from codeexec import status
from codeexec.api import Body, SandboxBindings
from codeexec.models import MAX_USED_BY, BindingType, SandboxBindingSpec, SecretKeyRef
from codeexec.validation import Rejection, field_path
from codeexec.vocabulary import BINDING_READY, CONDITION_READY, INVALID_SPEC, SECRET_MISSING

# The broker Service's port sandboxes use, when it has more than one (its only port otherwise).
BROKER_PORT_NAME = "api"
TYPES: tuple[BindingType, ...] = ("db", "ai")

BindingKey = tuple[str, str]  # (namespace, SandboxBinding name)
# The names of the running Executions that name a binding, as the Kopf index has them now.
Users = Callable[[BindingKey], Iterable[str]]
Ready = tuple[str, str, str]  # the Ready condition's status, reason and message


def granted(items: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """A namespace's SandboxBinding objects → name → type, what an Execution's spec.bindings may name (the type
    is its spec's one key: the API server refuses a spec with both or neither)."""
    named = ((item["metadata"]["name"], item.get("spec") or {}) for item in items)
    return {name: kind for name, spec in named for kind in TYPES if kind in spec}


@dataclass(frozen=True)
class Broker:
    """The broker as a sandbox reaches it: its Service's cluster IP and port (sandboxes have no DNS), and the pods
    behind it (namespace, selector, pod port) that the sandbox's NetworkPolicy lets it reach."""

    namespace: str
    cluster_ip: str
    port: int
    target_port: int
    selector: Mapping[str, str]

    @property
    def url(self) -> str:
        host = f"[{self.cluster_ip}]" if ipaddress.ip_address(self.cluster_ip).version == 6 else self.cluster_ip
        return f"http://{host}:{self.port}"


@dataclass(frozen=True)
class BrokerAccess:
    """What an Execution's sandbox gets to use its bindings: the broker and the Execution's token."""

    broker: Broker
    token: str


def broker_of(reference: str, service: Mapping[str, Any] | None) -> Broker | str:
    """The Broker from its Service (`reference`: "namespace/name"), or why sandboxes cannot reach it."""
    if service is None:
        return f"the broker Service {reference} does not exist"
    spec = service.get("spec") or {}
    cluster_ip = spec.get("clusterIP")
    if not cluster_ip or cluster_ip == "None":
        return f"the broker Service {reference} has no cluster IP"
    ports = spec.get("ports") or []
    port = ports[0] if len(ports) == 1 else next((p for p in ports if p.get("name") == BROKER_PORT_NAME), None)
    if port is None:
        return f"the broker Service {reference} has no port named {BROKER_PORT_NAME}"
    target_port = port.get("targetPort", port["port"])
    if not isinstance(target_port, int):
        # A NetworkPolicy needs the pods' port number; a port name may mean other numbers on other pods.
        return f"the broker Service {reference} names its targetPort ({target_port}); it must be a number"
    selector = spec.get("selector") or {}
    if not selector:
        return f"the broker Service {reference} selects no pods"
    namespace = reference.partition("/")[0]
    return Broker(namespace, cluster_ip, port["port"], target_port, dict(selector))


def parse_binding(body: Mapping[str, Any]) -> SandboxBindingSpec | Rejection:
    try:
        return SandboxBindingSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        first = error.errors()[0]
        return Rejection(INVALID_SPEC, f"{field_path(first['loc'])}: {first['msg']}")


def needed_secret(spec: SandboxBindingSpec | Rejection) -> SecretKeyRef | None:
    """The Secret key a valid binding needs to exist (postgres' DSN, an ai endpoint's API key); None when it
    needs none."""
    found = None if isinstance(spec, Rejection) else spec.secret_ref
    return None if found is None else found[0]


def readiness(spec: SandboxBindingSpec | Rejection, secret_keys: frozenset[str] | None) -> Ready:
    """The Ready condition of a binding; `secret_keys`: the keys of the Secret it needs (None: absent)."""
    if isinstance(spec, Rejection):
        return "False", spec.reason, spec.message
    if spec.secret_ref is not None:
        secret, field = spec.secret_ref
        if secret_keys is None:
            return "False", SECRET_MISSING, f"Secret {secret.name} ({field}) does not exist"
        if secret.key not in secret_keys:
            return "False", SECRET_MISSING, f"Secret {secret.name} has no key {secret.key} ({field})"
    serves = f"{spec.db.engine} database" if spec.db else "OpenAI-compatible endpoint"
    return "True", BINDING_READY, f"{serves}; Executions of this namespace may name it"


def status_patch(
    current: Mapping[str, Any],
    generation: int,
    binding_type: BindingType | None,
    ready: Ready,
    users: Sequence[str],
    now: datetime,
) -> dict[str, Any] | None:
    """The binding's new status (`binding_type`: None while the spec is invalid); None when nothing in it would
    change (no write, no watch event)."""
    names = sorted(users)
    conditions = status.with_condition(current.get("conditions") or [], CONDITION_READY, *ready, now, generation)
    patch = {
        "type": binding_type,
        "inUse": len(names),
        "usedBy": names[:MAX_USED_BY],
        "conditions": conditions,
        "observedGeneration": generation,
    }
    return None if all(current.get(key) == value for key, value in patch.items()) else patch


class BindingKeeper:
    """Writes each SandboxBinding's status when it changes, and when the running Executions that name it change
    (no timer: it would put a finalizer on every binding). One at a time: the status written is computed from
    the index as it is when written, never from an older look at it."""

    def __init__(self, api: SandboxBindings) -> None:
        self._api = api
        self._lock = threading.Lock()
        self._users: dict[BindingKey, tuple[str, ...]] = {}  # as last written

    def users_changed(self, namespace: str, names: Iterable[str], users: Users) -> None:
        """An Execution that names these bindings changed (started, ended, went): each binding whose users
        differ from those it last wrote is reconciled."""
        with self._lock:
            for name in names:
                key = (namespace, name)
                if self._users.get(key) != tuple(sorted(users(key))):
                    binding = self._api.read(namespace, name)
                    if binding is None:
                        self._users.pop(key, None)
                    else:
                        self._reconcile(binding, users)

    def reconcile(self, binding: Body, users: Users) -> None:
        """A binding created, changed or listed at start-up: its status from its spec and its users."""
        with self._lock:
            self._reconcile(binding, users)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._users.pop((namespace, name), None)

    def _reconcile(self, binding: Body, users: Users) -> None:
        metadata = binding["metadata"]
        key = (metadata["namespace"], metadata["name"])
        spec = parse_binding(binding)
        secret = needed_secret(spec)
        secret_keys = None if secret is None else self._api.secret_keys(key[0], secret.name)
        names = tuple(sorted(users(key)))
        generation: int = metadata.get("generation", 1)
        binding_type = None if isinstance(spec, Rejection) else spec.type
        ready = readiness(spec, secret_keys)
        patch = status_patch(binding.get("status") or {}, generation, binding_type, ready, names, _now())
        if patch is not None:
            self._api.patch_status(*key, patch)
        self._users[key] = names


def _now() -> datetime:
    return datetime.now(UTC)
