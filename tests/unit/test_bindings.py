"""SandboxBindings without a cluster: what a namespace grants, the broker as sandboxes reach it, and each
binding's status (Ready, inUse, usedBy) written only when it changes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from codeexec import bindings
from codeexec.bindings import BindingKeeper, BindingKey, Broker
from codeexec.validation import Rejection
from tests.unit.factories import NOW
from tests.unit.fakes import BROKER, NAMESPACE, FakeSandboxBindings, sandbox_binding

POSTGRES = {"engine": "postgres", "dsnSecretRef": {"name": "pg", "key": "dsn"}}
AI = {"endpoint": "http://llm.models.svc:8080/v1", "models": ["tiny"], "apiKeySecretRef": {"name": "llm", "key": "key"}}


def ai_binding(name: str, **ai: Any) -> dict[str, Any]:
    return {**sandbox_binding(name), "spec": {"ai": ai}}


def test_granted_names_each_binding_with_its_type() -> None:
    items = [
        sandbox_binding("notes"),
        sandbox_binding("pg", **POSTGRES),
        ai_binding("llm", **AI),
        {"metadata": {"name": "odd"}, "spec": {}},
    ]
    assert bindings.granted(items) == {"notes": "db", "pg": "db", "llm": "ai"}


def test_broker_from_its_service() -> None:
    assert bindings.broker_of("codeexec-system/code-exec-broker", BROKER) == Broker(
        "codeexec-system",
        "10.96.0.57",
        8080,
        8080,
        {"app.kubernetes.io/instance": "code-exec", "app.kubernetes.io/component": "broker"},
    )


def service(ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"spec": {"clusterIP": "10.96.0.9", "ports": ports, "selector": {"app": "broker"}, **spec}}


def test_broker_port_is_the_one_named_api_among_several_and_the_pods_port_defaults_to_it() -> None:
    ports = [{"name": "metrics", "port": 9090, "targetPort": 9090}, {"name": "api", "port": 80, "targetPort": 8080}]
    broker = bindings.broker_of("ns/b", service(ports))
    assert isinstance(broker, Broker)
    assert (broker.url, broker.target_port) == ("http://10.96.0.9:80", 8080)
    alone = bindings.broker_of("ns/b", service([{"port": 8080}]))
    assert isinstance(alone, Broker) and alone.target_port == 8080


@pytest.mark.parametrize(
    ("found", "words"),
    [
        (None, "ns/b does not exist"),
        (service([{"port": 8080}], clusterIP="None"), "no cluster IP"),
        (service([{"name": "metrics", "port": 9090}, {"name": "web", "port": 8080}]), "no port named api"),
        (service([{"port": 8080, "targetPort": "http"}]), "must be a number"),
        (service([{"port": 8080}], selector={}), "selects no pods"),
    ],
)
def test_a_broker_sandboxes_cannot_reach_says_why(found: dict[str, Any] | None, words: str) -> None:
    problem = bindings.broker_of("ns/b", found)
    assert isinstance(problem, str) and words in problem


def test_readiness_of_a_valid_sqlite_binding() -> None:
    spec = bindings.parse_binding(sandbox_binding("notes"))
    assert bindings.needed_secret(spec) is None
    assert bindings.readiness(spec, None) == (
        "True",
        "Ready",
        "sqlite database; Executions of this namespace may name it",
    )


def test_readiness_of_a_postgres_binding_needs_its_secret_key() -> None:
    spec = bindings.parse_binding(sandbox_binding("pg", **POSTGRES))
    secret = bindings.needed_secret(spec)
    assert secret is not None and (secret.name, secret.key) == ("pg", "dsn")
    assert bindings.readiness(spec, frozenset({"dsn", "other"}))[:2] == ("True", "Ready")
    assert bindings.readiness(spec, None) == (
        "False",
        "SecretMissing",
        "Secret pg (spec.db.dsnSecretRef) does not exist",
    )
    assert bindings.readiness(spec, frozenset({"password"})) == (
        "False",
        "SecretMissing",
        "Secret pg has no key dsn (spec.db.dsnSecretRef)",
    )


def test_an_invalid_binding_is_not_ready_and_says_which_field() -> None:
    spec = bindings.parse_binding(sandbox_binding("bad", engine="postgres"))
    assert isinstance(spec, Rejection)
    assert bindings.needed_secret(spec) is None
    status, reason, message = bindings.readiness(spec, None)
    assert (status, reason) == ("False", "InvalidSpec")
    assert message.startswith("spec.db: ") and "dsnSecretRef is required" in message


def test_readiness_of_an_ai_binding_needs_its_api_key_only_when_it_names_one() -> None:
    spec = bindings.parse_binding(ai_binding("llm", **AI))
    secret = bindings.needed_secret(spec)
    assert secret is not None and (secret.name, secret.key) == ("llm", "key")
    assert bindings.readiness(spec, None) == (
        "False",
        "SecretMissing",
        "Secret llm (spec.ai.apiKeySecretRef) does not exist",
    )
    assert bindings.readiness(spec, frozenset({"dsn"}))[2] == "Secret llm has no key key (spec.ai.apiKeySecretRef)"
    assert bindings.readiness(spec, frozenset({"key"})) == (
        "True",
        "Ready",
        "OpenAI-compatible endpoint; Executions of this namespace may name it",
    )
    without_key = bindings.parse_binding(ai_binding("open", endpoint="http://10.0.0.9/v1", models=["tiny"]))
    assert bindings.needed_secret(without_key) is None
    assert bindings.readiness(without_key, None)[:2] == ("True", "Ready")


def test_a_binding_with_both_types_or_neither_is_invalid() -> None:
    both = bindings.parse_binding({"spec": {"db": {}, "ai": AI}})
    neither = bindings.parse_binding({"spec": {}})
    for spec in (both, neither):
        assert isinstance(spec, Rejection) and "exactly one of db, ai" in spec.message


def test_status_counts_every_user_names_twenty_and_is_written_only_on_change() -> None:
    ready = ("True", "Ready", "sqlite database")
    users = [f"ex-{i:02d}" for i in range(25, 0, -1)]
    patch = bindings.status_patch({}, 3, "db", ready, users, NOW)
    assert patch is not None
    assert patch["type"] == "db"
    assert patch["inUse"] == 25
    assert patch["usedBy"] == [f"ex-{i:02d}" for i in range(1, 21)]
    assert patch["observedGeneration"] == 3
    assert patch["conditions"] == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Ready",
            "message": "sqlite database",
            "lastTransitionTime": "2030-01-02T03:04:05Z",
            "observedGeneration": 3,
        }
    ]
    later = NOW.replace(hour=9)
    assert bindings.status_patch(patch, 3, "db", ready, users, later) is None, "nothing changed: no write"
    ended = bindings.status_patch(patch, 3, "db", ready, users[1:], later)
    assert ended is not None and ended["inUse"] == 24
    assert ended["conditions"][0]["lastTransitionTime"] == "2030-01-02T03:04:05Z", "Ready did not change"


class Index:
    """The running Executions by binding, as Kopf's index would hold them."""

    def __init__(self) -> None:
        self.users: dict[BindingKey, list[str]] = {}

    def __call__(self, key: BindingKey) -> Iterable[str]:
        return list(self.users.get(key, []))


def test_keeper_writes_a_bindings_users_only_when_they_change() -> None:
    api = FakeSandboxBindings(sandbox_binding("notes"), sandbox_binding("audit"))
    keeper, index = BindingKeeper(api), Index()
    index.users[NAMESPACE, "notes"] = ["ex-a"]
    keeper.users_changed(NAMESPACE, ["notes", "audit"], index)
    assert [(name, patch["inUse"], patch["usedBy"]) for name, patch in api.patches] == [
        ("notes", 1, ["ex-a"]),
        ("audit", 0, []),
    ]
    keeper.users_changed(NAMESPACE, ["notes", "audit"], index)  # e.g. the Execution's next status write
    assert len(api.patches) == 2 and api.reads == ["notes", "audit"], "no read, no write: nothing changed"
    index.users[NAMESPACE, "notes"] = []
    keeper.users_changed(NAMESPACE, ["notes", "audit"], index)
    assert api.patches[-1] == ("notes", {**api.patches[0][1], "inUse": 0, "usedBy": []})
    assert len(api.patches) == 3


def test_keeper_checks_a_postgres_bindings_secret_and_forgets_deleted_bindings() -> None:
    binding = sandbox_binding("pg", **POSTGRES)
    api = FakeSandboxBindings(binding)
    keeper, index = BindingKeeper(api), Index()
    keeper.reconcile(binding, index)
    assert api.patches[-1][1]["conditions"][0]["reason"] == "SecretMissing"
    api.secrets[NAMESPACE, "pg"] = frozenset({"dsn"})
    index.users[NAMESPACE, "pg"] = ["ex-a"]
    keeper.users_changed(NAMESPACE, ["pg"], index)  # an Execution started: the Secret is seen again too
    condition = api.patches[-1][1]["conditions"][0]
    assert (condition["status"], condition["reason"]) == ("True", "Ready")
    del api.items[NAMESPACE, "pg"]
    keeper.forget(NAMESPACE, "pg")
    index.users[NAMESPACE, "pg"] = []
    keeper.users_changed(NAMESPACE, ["pg"], index)  # a binding gone: nothing to write
    assert len(api.patches) == 2


def test_keeper_gives_each_binding_its_type_and_checks_an_ai_bindings_key() -> None:
    llm, bad = ai_binding("llm", **AI), ai_binding("bad", endpoint="ftp://x", models=["tiny"])
    api = FakeSandboxBindings(sandbox_binding("notes"), llm, bad)
    keeper, index = BindingKeeper(api), Index()
    for item in api.items.values():
        keeper.reconcile(item, index)
    written = dict(api.patches)
    assert {name: patch["type"] for name, patch in written.items()} == {"notes": "db", "llm": "ai", "bad": None}
    assert written["llm"]["conditions"][0]["reason"] == "SecretMissing"
    assert written["bad"]["conditions"][0]["reason"] == "InvalidSpec"
    api.secrets[NAMESPACE, "llm"] = frozenset({"key"})
    keeper.reconcile(llm, index)
    assert api.patches[-1][1]["conditions"][0]["reason"] == "Ready"
