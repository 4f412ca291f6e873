"""The check of every call: token → Execution (GET, its uid) → bindingtoken.matches → not finished (phase Pending or
Running) → the binding named in its spec.bindings → that SandboxBinding exists. Nothing is cached: a token dies with
its Execution."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from codeexec import bindingtoken
from codeexec.broker.ai import AiTarget
from codeexec.broker.engine import Target
from codeexec.broker.errors import BackendUnavailable, BadRequest, BrokerError, NotGranted, Unauthorized
from codeexec.broker.kube import Kube, binding_path, execution_path
from codeexec.models import MAX_OBJECT_NAME_LENGTH, OBJECT_NAME_PATTERN, SandboxBindingSpec
from codeexec.vocabulary import Phase

_NAME = re.compile(OBJECT_NAME_PATTERN)
UNFINISHED = frozenset({Phase.PENDING, Phase.RUNNING})


@dataclass(frozen=True)
class Caller:
    """Who a call says it comes from: its bearer token and the Execution `<namespace>/<name>` it names."""

    token: str
    namespace: str
    name: str

    @classmethod
    def from_headers(cls, authorization: str | None, execution: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        namespace, _, name = (execution or "").partition("/")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("no bearer token")
        if not (_object_name(namespace) and _object_name(name)):
            raise Unauthorized("no X-Codeexec-Execution <namespace>/<name>")
        return cls(token.strip(), namespace, name)


def _object_name(text: str) -> bool:
    return len(text) <= MAX_OBJECT_NAME_LENGTH and _NAME.match(text) is not None


def shown(binding: str) -> str:
    """The binding name of a call's URL as Events and logs may show it: the caller chose it, so only a valid object
    name (no spaces, no line breaks, no sentences) is repeated."""
    return binding if _object_name(binding) else "<not a valid name>"


@dataclass(frozen=True)
class Grant:
    """A call allowed: the Execution (as read now) and the binding it may use (of either type: the route checks)."""

    execution: dict[str, Any]
    namespace: str
    binding: str
    spec: SandboxBindingSpec

    @property
    def uid(self) -> str:
        uid: str = self.execution["metadata"]["uid"]
        return uid

    def db(self) -> Target:
        if self.spec.db is None:
            raise self._other_type("db")
        return Target(self.namespace, self.binding, self.spec.db)

    def ai(self) -> AiTarget:
        if self.spec.ai is None:
            raise self._other_type("ai")
        return AiTarget(self.namespace, self.binding, self.spec.ai)

    def _other_type(self, asked: str) -> BadRequest:
        # Granted, but asked through the other type's API: the code's mistake, not a refusal.
        return BadRequest(f"the binding {self.binding!r} is of type {self.spec.type}, not {asked}")


class Refused(Exception):
    """The check said no: `error` is what the code gets; `execution` the Execution it named, when it exists
    (the refusal is reported on it), and `binding` the refused binding when the Execution names it."""

    def __init__(self, error: BrokerError, execution: dict[str, Any] | None, binding: str | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.execution = execution
        self.binding = binding


async def check(kube: Kube, key: bytes, caller: Caller, binding: str) -> Grant:
    """The Grant, or Refused (401 Unauthorized / 403 NotGranted); BackendUnavailable when the API does not answer.
    A Refused carries the Execution (for an Event on it) only once the token matched it: else anyone reaching the
    broker could write Events on any Execution."""
    execution = await kube.get(execution_path(caller.namespace, caller.name))
    if execution is None:
        raise Refused(Unauthorized(f"no Execution {caller.namespace}/{caller.name}"), None)
    uid = execution["metadata"]["uid"]
    if not bindingtoken.matches(key, caller.token, caller.namespace, caller.name, uid):
        raise Refused(Unauthorized("the token is not this Execution's"), None)
    phase = (execution.get("status") or {}).get("phase")
    # Pending too: the program may start before the operator has seen its pod run and written Running (the kubelet
    # reports a started container up to a second late, and not at all to an operator that is down), and no one holds
    # the token of an Execution that has no sandbox yet (it exists only in the Secret its launch creates).
    if phase not in UNFINISHED:
        raise Refused(Unauthorized(f"the Execution is {phase or 'not accepted'}, not Pending or Running"), execution)
    if binding not in ((execution.get("spec") or {}).get("bindings") or []):
        raise Refused(NotGranted(f"the Execution does not name the binding {shown(binding)!r}"), execution)
    found = await kube.get(binding_path(caller.namespace, binding))
    if found is None:
        raise Refused(NotGranted(f"no SandboxBinding {binding!r} in {caller.namespace}"), execution, binding)
    try:
        spec = SandboxBindingSpec.model_validate(found.get("spec") or {})
    except ValidationError as error:
        raise BackendUnavailable(f"the SandboxBinding {binding!r} is not valid: {error.errors()[0]['msg']}") from error
    return Grant(execution, caller.namespace, binding, spec)
