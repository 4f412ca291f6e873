"""Unit tests of the gateway's own rules, with no API server behind it: identity, limits, problem documents,
readiness.
(Everything that reaches Kubernetes is tested end to end in tests/e2e/test_gateway.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fastapi.testclient import TestClient

from codeexec.client import errors
from codeexec.client.kubeapi import Connection, KubeApi
from codeexec.client.transports import _problem_error
from codeexec.gateway import readiness
from codeexec.gateway.app import Settings, create_app, wait_seconds
from codeexec.gateway.identity import bearer_token, service_account_namespace
from codeexec.gateway.limits import WaitSlots

# Nothing listens there: a test that reached the API server would fail with 502.
NOWHERE = Connection("https://127.0.0.1:9", False)


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(NOWHERE, Settings(max_body_bytes=1000)))


def test_no_token_is_401_with_a_problem_document(client: TestClient) -> None:
    with client:
        answer = client.get("/executions")
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"] == "Bearer"
    problem = answer.json()
    assert (problem["status"], problem["reason"], problem["instance"]) == (401, "Unauthorized", "/executions")
    assert problem["type"].endswith("/Unauthorized")


def test_body_over_the_limit_is_413_before_the_route_runs(client: TestClient) -> None:
    """Without a token too: the body limit comes before anything else (seen failing with 401 when the
    route's dependencies ran first)."""
    with client:
        answer = client.post("/execute", content=b"x" * 2000, headers={"content-type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert answer.json()["reason"] == "RequestTooLarge"


def test_invalid_body_is_422_with_field_paths(client: TestClient) -> None:
    with client:
        answer = client.post(
            "/execute?namespace=x",
            json={"language": "py", "timeoutSeconds": "x"},
            headers={"authorization": "Bearer t"},
        )
    assert answer.status_code == 422
    assert {e["field"] for e in answer.json()["errors"]} == {"code", "timeoutSeconds"}


def test_unreachable_api_server_is_502(client: TestClient) -> None:
    with client:
        answer = client.get("/executions?namespace=x", headers={"authorization": "Bearer t"})
    assert answer.status_code == 502
    assert answer.json()["reason"] == "Unavailable"


def test_unknown_path_is_a_404_problem(client: TestClient) -> None:
    with client:
        answer = client.get("/nothing")
    assert answer.status_code == 404 and answer.json()["reason"] == "NotFound"


def test_health_needs_no_token(client: TestClient) -> None:
    with client:
        assert client.get("/health").json() == {"status": "ok"}


def test_bearer_token_and_service_account_namespace() -> None:
    assert bearer_token("Bearer abc ") == "abc"
    assert bearer_token("bearer abc") == "abc"
    for header in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(errors.Unauthorized):
            bearer_token(header)
    assert service_account_namespace("system:serviceaccount:team-a:bot") == "team-a"
    assert service_account_namespace("alice@example.com") is None


def test_prefer_wait_only_shortens_the_wait() -> None:
    assert wait_seconds(None, 300) == 300
    assert wait_seconds("wait=5", 300) == 5
    assert wait_seconds("respond-async, wait=10", 300) == 10
    assert wait_seconds("wait=9999", 300) == 300


def test_wait_slots_are_per_caller() -> None:
    slots = WaitSlots(1)
    with slots.hold("a"):
        with pytest.raises(errors.TooManyRequests), slots.hold("a"):
            pass
        with slots.hold("b"):
            pass
    with slots.hold("a"):
        pass


def test_docs_are_served_from_the_package_without_any_other_host(client: TestClient) -> None:
    """Seen failing with FastAPI's default /docs, whose page loads Swagger UI from cdn.jsdelivr.net."""
    with client:
        page = client.get("/docs").text
        for url in re.findall(r"""(?:src|href)=["']([^"']+)""", page):
            assert url.startswith("/docs/assets/"), url
            assert client.get(url).status_code == 200, url
        assert "validatorUrl" in page and "http" not in page.replace("http-equiv", "")
        assert client.get("/redoc").status_code == 404
        runtime = client.get("/docs/runtime").text
        assert "console.log" in runtime and "return VALUE" in runtime


class Namespace:
    """Stands in for the API server's Execution collection of one namespace, as KubeApi's two calls see it."""

    def __init__(self, *statuses: dict[str, Any] | None) -> None:
        self.items = [
            {"metadata": {"name": f"e{i}", "namespace": "team"}, **({"status": s} if s is not None else {})}
            for i, s in enumerate(statuses)
        ]
        self.created: list[dict[str, Any]] = []
        self.listed_as: list[tuple[str | None, str]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        namespace = self

        async def list_executions(api: KubeApi, label_selector: str | None = None) -> list[dict[str, Any]]:
            namespace.listed_as.append((api.connection.token, api.namespace))
            return namespace.items

        async def create_execution(api: KubeApi, manifest: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
            created = {**manifest, "metadata": {"name": "ex-new", "namespace": api.namespace}}
            namespace.created.append(created)
            return created

        monkeypatch.setattr(KubeApi, "list_executions", list_executions)
        monkeypatch.setattr(KubeApi, "create_execution", create_execution)


QUEUED = {"phase": "Pending", "reason": "Queued", "queuePosition": 1}
# Counted: queued, or not seen by the operator yet (no status, or one without a phase).
WAITING: list[dict[str, Any] | None] = [QUEUED, None, {}]
# Not counted: starting (Pending for another reason), running, finished, rejected.
NOT_WAITING: list[dict[str, Any] | None] = [
    {"phase": "Pending", "reason": "Scheduled"},
    {"phase": "Running"},
    {"phase": "Succeeded", "reason": "Completed"},
    {"phase": "Rejected", "reason": "InvalidSpec"},
]
EXECUTE = {"language": "python", "code": "print(1)", "wait": False}
AS_ALICE = {"authorization": "Bearer alice-token"}


def queue_limited(limit: int) -> TestClient:
    return TestClient(create_app(NOWHERE, Settings(max_queued_per_namespace=limit)))


def test_full_namespace_queue_is_429_with_retry_after_and_creates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = Namespace(*WAITING, *NOT_WAITING)
    namespace.install(monkeypatch)
    with queue_limited(3) as client:
        answer = client.post("/execute?namespace=team", json=EXECUTE, headers=AS_ALICE)
    assert answer.status_code == 429, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert int(answer.headers["retry-after"]) > 0
    problem = answer.json()
    assert (problem["status"], problem["reason"], problem["instance"]) == (429, "QueueFull", "/execute")
    assert "3 Executions waiting" in problem["detail"]
    assert namespace.created == []
    # Counted as the caller, in the caller's namespace: RBAC decides what it may list.
    assert namespace.listed_as == [("alice-token", "team")]


def test_below_the_limit_the_execution_is_created(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only waiting Executions count: three waiting and many running or done leave room under a limit of 4."""
    namespace = Namespace(*WAITING, *NOT_WAITING, *NOT_WAITING)
    namespace.install(monkeypatch)
    with queue_limited(4) as client:
        answer = client.post("/execute?namespace=team", json=EXECUTE, headers=AS_ALICE)
    assert answer.status_code == 202, answer.text
    assert [c["metadata"]["name"] for c in namespace.created] == ["ex-new"]


def test_no_limit_by_default_does_not_even_list(monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = Namespace(*([QUEUED] * 50))
    namespace.install(monkeypatch)
    assert Settings().max_queued_per_namespace == 0
    with TestClient(create_app(NOWHERE)) as client:
        answer = client.post("/execute?namespace=team", json=EXECUTE, headers=AS_ALICE)
    assert answer.status_code == 202, answer.text
    assert namespace.listed_as == [] and len(namespace.created) == 1


def test_the_sdk_reads_a_full_queue_as_too_many_requests() -> None:
    error = _problem_error(429, {"status": 429, "reason": "QueueFull", "detail": "namespace team is full"})
    assert isinstance(error, errors.TooManyRequests) and error.reason == "QueueFull"


ESTABLISHED = {
    "status": {"conditions": [{"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": "True"}]}
}
NOT_ESTABLISHED = {"status": {"conditions": [{"type": "Established", "status": "False"}]}}
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
OPERATOR_PATH = "/apis/apps/v1/namespaces/code-exec/deployments/code-exec"


class ApiServer:
    """Stands in for readiness.get: answers by path, and records the tokens each path was read with."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.answers: dict[str, Any] = {
            "/readyz": (200, None),
            **{CRD_PATH + name: (200, ESTABLISHED) for name in readiness.CRDS},
            OPERATOR_PATH: (200, {"status": {"replicas": 2, "availableReplicas": 1}}),
        }
        self.answers.update(answers or {})
        self.tokens: list[tuple[str, str | None]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        api_server = self

        async def get(session: Any, server: Connection, path: str, token: str | None) -> Any:
            api_server.tokens.append((path, token))
            answer = api_server.answers.get(path, (404, None))
            if isinstance(answer, Exception):
                raise answer
            return answer

        monkeypatch.setattr(readiness, "get", get)


def ready_client(token_file: Path | None) -> TestClient:
    config = readiness.ReadinessConfig(str(token_file) if token_file else None, "code-exec", "code-exec")
    return TestClient(create_app(NOWHERE, Settings(readiness=config)))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("pod-token-1\n")
    return path


def test_ready_when_every_check_passes_reading_with_the_pods_own_token(
    monkeypatch: pytest.MonkeyPatch, token_file: Path
) -> None:
    api_server = ApiServer()
    api_server.install(monkeypatch)
    with ready_client(token_file) as client:
        answer = client.get("/health/ready")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "ok", "checks": {"apiServer": True, "crds": True, "operator": True}}
        # The file is read on each check: a rotated token is used at once.
        token_file.write_text("pod-token-2")
        assert client.get("/health/ready").status_code == 200
    assert ("/readyz", None) in api_server.tokens  # the liveness of the API server needs no token
    assert (OPERATOR_PATH, "pod-token-1") in api_server.tokens and (OPERATOR_PATH, "pod-token-2") in api_server.tokens
    assert {path for path, token in api_server.tokens if token} == {OPERATOR_PATH} | {
        CRD_PATH + name for name in readiness.CRDS
    }


@pytest.mark.parametrize(
    ("answers", "failing"),
    [
        ({"/readyz": (500, None)}, "apiServer"),
        ({"/readyz": aiohttp.ClientConnectionError("refused")}, "apiServer"),
        ({CRD_PATH + "warmpools.codeexec.io": (404, None)}, "crds"),
        ({CRD_PATH + "runtimes.codeexec.io": (403, None)}, "crds"),
        ({CRD_PATH + "runtimes.codeexec.io": TimeoutError()}, "crds"),
        ({CRD_PATH + "executions.codeexec.io": (200, NOT_ESTABLISHED)}, "crds"),
        ({CRD_PATH + "executions.codeexec.io": (200, {"status": {}})}, "crds"),
        ({OPERATOR_PATH: (200, {"status": {"replicas": 2, "availableReplicas": 0}})}, "operator"),
        ({OPERATOR_PATH: (200, {"status": {"replicas": 0}})}, "operator"),
        ({OPERATOR_PATH: (404, None)}, "operator"),
        ({OPERATOR_PATH: TimeoutError()}, "operator"),
    ],
)
def test_not_ready_names_the_failing_check(
    monkeypatch: pytest.MonkeyPatch, token_file: Path, answers: dict[str, Any], failing: str
) -> None:
    ApiServer(answers=answers).install(monkeypatch)
    with ready_client(token_file) as client:
        answer = client.get("/health/ready")
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["status"] == "unavailable"
    assert body["checks"][failing] is False
    if failing != "apiServer":  # an unreachable API server fails every check; else only the one
        assert [name for name, value in body["checks"].items() if value is not True] == [failing]


def test_without_a_token_file_only_the_api_server_is_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The gateway run outside a cluster: the CRD and operator checks are skipped (null), not failed."""
    api_server = ApiServer()
    api_server.install(monkeypatch)
    for token_file in (None, tmp_path / "absent"):
        with ready_client(token_file) as client:
            answer = client.get("/health/ready")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "ok", "checks": {"apiServer": True, "crds": None, "operator": None}}
    assert {path for path, _ in api_server.tokens} == {"/readyz"}
    ApiServer(answers={"/readyz": (503, None)}).install(monkeypatch)
    with ready_client(None) as client:
        answer = client.get("/health/ready")
    assert answer.status_code == 503
    assert answer.json()["checks"] == {"apiServer": False, "crds": None, "operator": None}


def test_readiness_against_nothing_is_503(client: TestClient) -> None:
    with client:
        answer = client.get("/health/ready")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable", "checks": {"apiServer": False, "crds": None, "operator": None}}
