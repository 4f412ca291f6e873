"""The Kopf wiring: which handlers exist and what they watch (behaviour is tested in the pure modules)."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import kopf
import pytest

import codeexec.handlers


def handlers_of(resource: str) -> dict[str, Any]:
    registry = kopf.get_default_registry()
    found = {}
    for kind in (registry._changing, registry._spawning, registry._watching):
        for handler in kind.get_all_handlers():
            if handler.selector is not None and handler.selector.any_name == resource:
                found[handler.id] = handler
    return found


def test_executions_are_started_and_watched_without_deletion_handlers() -> None:
    handlers = handlers_of("executions")
    assert set(handlers) == {"start_execution", "watch_execution", "binding_use_changed"}
    # No on.delete: nothing to clean up that owner references do not, and no finalizer for it.
    reasons = {handler.reason for handler in _changing("executions")}
    assert reasons == {"create", None}  # None: on.resume


def test_pools_are_kept_on_every_change_and_resume_without_a_finalizer() -> None:
    """Fails when a Kopf timer or a mandatory on.delete comes back: either holds a finalizer on every pool, and
    a pool could then not be deleted without the operator (seen with `helm uninstall` of the demo)."""
    handlers = handlers_of("warmpools")
    assert set(handlers) == {"keep_pool"}
    assert {handler.reason for handler in _changing("warmpools")} == {"create", "update", None}  # None: resume
    assert not [
        h for h in kopf.get_default_registry()._spawning.get_all_handlers() if h.selector.any_name == "warmpools"
    ]
    assert not [h for h in _changing("warmpools") if h.requires_finalizer]


def test_a_runtime_change_reaches_every_pool() -> None:
    """A settled pool has no timer: without this a Runtime's new image would never roll it."""
    assert set(handlers_of("runtimes")) == {"runtime_changed"}
    indices = [h.id for h in kopf.get_default_registry()._indexing.get_all_handlers()]
    assert codeexec.handlers.POOL_INDEX in indices
    reconciled: list[tuple[str, str]] = []

    class Keeper:
        def reconcile(self, namespace: str, name: str) -> None:
            reconciled.append((namespace, name))

    index = {codeexec.handlers.POOLS: [("team", "py"), ("other", "js")]}
    memo = kopf.Memo(pools=Keeper())
    codeexec.handlers.runtime_changed(event={"type": None}, memo=memo, warm_pools=index)
    assert reconciled == []  # the start-up listing: pools resume by themselves
    codeexec.handlers.runtime_changed(event={"type": "MODIFIED"}, memo=memo, warm_pools=index)
    assert reconciled == [("team", "py"), ("other", "js")]


def test_bindings_are_kept_from_events_without_a_finalizer_or_annotations() -> None:
    """Only event handlers on SandboxBindings (no on.create/update: Kopf would annotate every binding; no timer
    or on.delete: a finalizer would make deleting a binding or its namespace wait for the operator)."""
    assert set(handlers_of("sandboxbindings")) == {"binding_changed"}
    registry = kopf.get_default_registry()
    for kind in (registry._changing, registry._spawning):
        assert not [h for h in kind.get_all_handlers() if h.selector.any_name == "sandboxbindings"]
    indices = {h.id: h for h in registry._indexing.get_all_handlers()}
    assert indices[codeexec.handlers.BINDING_USERS_INDEX].selector.any_name == "executions"


def test_binding_handlers_pass_the_running_users_by_binding() -> None:
    calls: list[tuple[Any, ...]] = []

    class Keeper:
        def users_changed(self, namespace: str, names: list[str], users: Any) -> None:
            calls.append(("users_changed", namespace, names, users(("team", "notes"))))

        def reconcile(self, binding: dict[str, Any], users: Any) -> None:
            calls.append(("reconcile", binding["metadata"]["name"], users(("team", "other"))))

        def forget(self, namespace: str, name: str) -> None:
            calls.append(("forget", namespace, name))

    memo = kopf.Memo(bindings=Keeper())
    index = {("team", "notes"): ["ex-a", "ex-b"]}
    running = {"metadata": {"namespace": "team", "name": "ex-a"}, "spec": {"bindings": ["notes", "other"]}}
    assert codeexec.handlers.binding_users(body={**running, "status": {"phase": "Running"}}) == {
        ("team", "notes"): "ex-a",
        ("team", "other"): "ex-a",
    }
    codeexec.handlers.binding_use_changed(body=running, memo=memo, binding_users=index)
    binding = {"metadata": {"namespace": "team", "name": "other"}}
    codeexec.handlers.binding_changed(event={"type": None}, body=binding, memo=memo, binding_users=index)
    codeexec.handlers.binding_changed(event={"type": "DELETED"}, body=binding, memo=memo, binding_users=index)
    assert calls == [
        ("users_changed", "team", ["notes", "other"], ["ex-a", "ex-b"]),
        ("reconcile", "other", []),
        ("forget", "team", "other"),
    ]


@pytest.mark.parametrize(
    ("phase", "bindings", "indexed"),
    [
        ("Running", ["notes"], True),
        ("Pending", ["notes"], False),
        ("Succeeded", ["notes"], False),
        ("Running", [], False),
    ],
)
def test_only_running_executions_with_bindings_use_them(phase: str, bindings: list[str], indexed: bool) -> None:
    body = kopf.Body(cast(kopf.RawBody, {"spec": {"bindings": bindings}, "status": {"phase": phase}}))
    assert codeexec.handlers._running_with_bindings(body=body) is indexed


def test_only_sandbox_and_pool_pods_are_watched() -> None:
    handlers = handlers_of("pods")
    assert set(handlers) == {"pod_event", "pool_pod_event"}
    assert handlers["pod_event"].labels == {
        "app.kubernetes.io/managed-by": "code-exec",
        "codeexec.io/execution-uid": kopf.PRESENT,
    }
    assert handlers["pool_pod_event"].labels == {
        "app.kubernetes.io/managed-by": "code-exec",
        "codeexec.io/pool": kopf.PRESENT,
    }


def _changing(resource: str) -> list[Any]:
    return [
        handler
        for handler in kopf.get_default_registry()._changing.get_all_handlers()
        if handler.selector is not None and handler.selector.any_name == resource
    ]


def test_kopf_keeps_its_bookkeeping_out_of_status_and_sets_timeouts() -> None:
    settings = kopf.OperatorSettings()
    codeexec.handlers.configure(settings=settings)
    progress = settings.persistence.progress_storage
    diffbase = settings.persistence.diffbase_storage
    assert isinstance(progress, kopf.AnnotationsProgressStorage)
    assert isinstance(diffbase, kopf.AnnotationsDiffBaseStorage)
    assert progress.prefix == diffbase.prefix == "codeexec.io"
    assert settings.persistence.finalizer == "codeexec.io/finalizer"
    assert settings.watching.server_timeout is not None
    assert settings.watching.client_timeout is not None
    assert settings.watching.connect_timeout is not None
    assert settings.networking.request_timeout is not None
    # Settings are plain dataclasses: a misspelt name would be set silently, so compare.
    for group in (settings.persistence, settings.watching, settings.networking, settings.posting):
        assert set(vars(group)) <= {field.name for field in dataclasses.fields(group)}


@pytest.mark.parametrize(
    ("phase", "ttl", "deleting", "timer"),
    [
        ("Running", None, False, True),
        ("Succeeded", None, False, False),
        ("Succeeded", 120, False, True),  # its TTL counts
        ("Succeeded", 120, True, False),
        ("Running", None, True, False),
    ],
)
def test_the_timer_and_its_finalizer_end_with_the_deletion(
    phase: str, ttl: int | None, deleting: bool, timer: bool
) -> None:
    """Kopf keeps the timer's finalizer while this filter matches. Matching an Execution being deleted, it waits for
    the timer to exit, and a call still in flight then held the finalizer 60 s (tests/e2e/test_ttl.py)."""
    (watch,) = [h for h in kopf.get_default_registry()._spawning.get_all_handlers() if h.id == "watch_execution"]
    metadata = {"deletionTimestamp": "2026-12-02T03:00:00Z"} if deleting else {}
    raw = {"metadata": metadata, "spec": {"ttlSecondsAfterFinished": ttl}, "status": {"phase": phase}}
    assert watch.when(body=kopf.Body(cast(kopf.RawBody, raw))) is timer
