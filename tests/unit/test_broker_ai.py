"""The broker's ai route without a cluster, against a recording HTTP server in this file that answers like an
OpenAI-compatible API (canned JSON; it is not a model and infers nothing): what is forwarded and how, the answer
in Workers AI's shape, the allowed models, the per-Execution request and token budgets, the request timeout, the
endpoint's failures, and the API key reaching the endpoint only (never an answer, the status, an Event or a log)."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from codeexec.broker.app import BrokerSettings, create_app
from codeexec.broker.kube import Kube, binding_path, secret_path
from codeexec.broker.sqlite import SqliteEngine
from tests.unit.test_broker_access import KEY, NAMESPACE, FakeKube, headers, wait_for

API_KEY = "sk-test-0123456789-very-secret"
MODEL = "tiny-chat"
EMBEDDER = "tiny-embed"
COMPLETION = "canned text from the recording server"
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any


# (status, JSON body or raw bytes) for a request's path and body; the default answers like an OpenAI API.
Answer = Callable[[str, Any], tuple[int, Any]]


def openai_like(path: str, body: Any) -> tuple[int, Any]:
    """What an OpenAI-compatible API answers, canned: a fixed completion, or one vector [i, 0.5, -1] per text."""
    if path == "/v1/chat/completions":
        message = {"role": "assistant", "content": COMPLETION}
        return 200, {"object": "chat.completion", "choices": [{"index": 0, "message": message}], "usage": USAGE}
    if path == "/v1/embeddings":
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        # Out of order on purpose: OpenAI's `index` says which text a vector is.
        data = [{"object": "embedding", "index": i, "embedding": [i, 0.5, -1]} for i in range(len(texts))][::-1]
        return 200, {"object": "list", "data": data, "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    return 404, {"error": {"message": f"no route {path}"}}


@dataclass
class RecordingServer:
    """A plain HTTP server on 127.0.0.1 that records every request and answers with `answer` (after `delay`
    seconds; a 3xx redirects to /v1/moved; every answer sets a cookie): it stands in for a model endpoint's HTTP
    API, it is not a model."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    answer: Answer = openai_like
    delay: float = 0.0


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        recording = self.server.recording
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw) if raw else None
        recording.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        time.sleep(recording.delay)
        status, answer = recording.answer(self.path, body)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Set-Cookie", "session=from-the-endpoint")
            if 300 <= status < 400:
                self.send_header("Location", "/v1/moved")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the broker gave up (timeout)
            pass

    def log_message(self, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.recording = RecordingServer(url=f"http://127.0.0.1:{self.server_address[1]}/v1")


@pytest.fixture
def endpoint() -> Iterator[RecordingServer]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.recording
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def ai_binding(kube: FakeKube, name: str, url: str, **ai: Any) -> None:
    spec = {"endpoint": url, "models": [MODEL, EMBEDDER], "apiKeySecretRef": {"name": "llm", "key": "key"}, **ai}
    kube.objects[binding_path(NAMESPACE, name)] = {"metadata": {"name": name}, "spec": {"ai": spec}}


def api_key_secret(kube: FakeKube, value: str, version: str = "1") -> None:
    data = {"key": base64.b64encode(value.encode()).decode()}
    kube.objects[secret_path(NAMESPACE, "llm")] = {"metadata": {"resourceVersion": version}, "data": data}


@pytest.fixture
def kube(endpoint: RecordingServer) -> FakeKube:
    fake = FakeKube()
    fake.execution("ex-a", "uid-a", ["llm", "notes"])
    fake.execution("ex-b", "uid-b", ["llm"])
    fake.binding("notes")
    ai_binding(fake, "llm", endpoint.url)
    api_key_secret(fake, API_KEY)
    return fake


@pytest.fixture
def client(kube: FakeKube, tmp_path: Path) -> Iterator[TestClient]:
    def engines(_: Kube) -> dict[str, SqliteEngine]:
        return {"sqlite": SqliteEngine(tmp_path)}

    settings = BrokerSettings(KEY, lambda _: kube, engines, max_body_bytes=64 * 1024, usage_interval_seconds=0.05)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def run(client: TestClient, body: dict[str, Any], binding: str = "llm", **who: str) -> Any:
    return client.post(f"/v1/ai/{binding}/run", json=body, headers=headers(**who))


def prompt(text: str = "Say hi", model: str = MODEL, **options: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": text}, **({"options": options} if options else {})}


def last_entry(kube: FakeKube, name: str = "llm") -> dict[str, Any]:
    return next(e for e in kube.patches[-1][2]["status"]["bindings"] if e["name"] == name)


def test_a_prompt_is_one_user_message_to_chat_completions_with_the_key(
    client: TestClient, endpoint: RecordingServer
) -> None:
    answer = run(client, prompt("Say hi"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"response": COMPLETION, "usage": USAGE}
    (sent,) = endpoint.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 256,  # Workers AI's default
        "stream": False,
    }
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    # Nothing of the sandbox's call goes on: not its token, not its Execution.
    assert "x-codeexec-execution" not in sent.headers
    assert headers()["Authorization"] not in json.dumps(sent.headers)


def test_messages_and_options_are_forwarded(client: TestClient, endpoint: RecordingServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    body = {"model": MODEL, "input": {"messages": messages}, "options": {"max_tokens": 20, "temperature": 0}}
    answer = run(client, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"] == COMPLETION
    assert endpoint.requests[0].body == {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 20,
        "temperature": 0,
        "stream": False,
    }


def test_text_goes_to_embeddings_and_comes_back_in_workers_ai_shape(
    client: TestClient, endpoint: RecordingServer
) -> None:
    answer = run(client, {"model": EMBEDDER, "input": {"text": ["one", "two"]}})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "shape": [2, 3],
        "data": [[0, 0.5, -1], [1, 0.5, -1]],  # in the texts' order
        "usage": {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
    }
    assert run(client, {"model": EMBEDDER, "input": {"text": "one"}}).json()["shape"] == [1, 3]
    assert [(r.path, r.body) for r in endpoint.requests] == [
        ("/v1/embeddings", {"model": EMBEDDER, "input": ["one", "two"]}),
        ("/v1/embeddings", {"model": EMBEDDER, "input": "one"}),
    ]


def test_an_endpoint_without_auth_gets_no_authorization(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer
) -> None:
    ai_binding(kube, "llm", endpoint.url, apiKeySecretRef=None)
    del kube.objects[binding_path(NAMESPACE, "llm")]["spec"]["ai"]["apiKeySecretRef"]
    assert run(client, prompt()).status_code == 200
    assert "authorization" not in endpoint.requests[0].headers


def test_the_key_is_read_at_each_call(client: TestClient, kube: FakeKube, endpoint: RecordingServer) -> None:
    run(client, prompt())
    api_key_secret(kube, "sk-rotated", version="2")
    run(client, prompt())
    assert [r.headers["authorization"] for r in endpoint.requests] == [f"Bearer {API_KEY}", "Bearer sk-rotated"]
    del kube.objects[secret_path(NAMESPACE, "llm")]
    answer = run(client, prompt())
    assert answer.status_code == 503
    assert answer.json()["error"] == {
        "code": "BackendUnavailable",
        "message": "the binding 'llm': Secret llm has no key key",
    }
    assert len(endpoint.requests) == 2


def test_a_model_the_binding_does_not_list_is_refused_before_anything_is_sent(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer
) -> None:
    answer = run(client, prompt(model="gpt-4o"))
    assert answer.status_code == 403
    assert answer.json()["error"] == {
        "code": "ModelNotAllowed",
        "message": "the binding 'llm' does not allow the model 'gpt-4o'",
    }
    assert endpoint.requests == []
    wait_for(lambda: kube.events and kube.patches)
    assert kube.events[0]["reason"] == "BindingRefused" and "gpt-4o" in kube.events[0]["message"]
    assert last_entry(kube)["refused"] == 1


def test_each_api_serves_its_own_type_only(client: TestClient, endpoint: RecordingServer) -> None:
    """Both bindings are granted: asking one through the other's API is the code's mistake (400), no refusal."""
    answer = run(client, prompt(), binding="notes")
    assert answer.status_code == 400
    assert answer.json()["error"] == {"code": "BadRequest", "message": "the binding 'notes' is of type db, not ai"}
    answer = client.post("/v1/db/llm/query", json={"sql": "select 1"}, headers=headers())
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "the binding 'llm' is of type ai, not db"
    assert endpoint.requests == []


def test_the_access_check_comes_first(client: TestClient, endpoint: RecordingServer) -> None:
    assert run(client, prompt(), token="x" * 43).status_code == 401
    assert run(client, prompt(), binding="notes", name="ex-b", uid="uid-b").status_code == 403  # not named
    assert endpoint.requests == []


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL},
        {"model": MODEL, "input": {}},
        {"model": MODEL, "input": {"prompt": "a", "text": "b"}},
        {"model": MODEL, "input": {"messages": [{"role": "robot", "content": "x"}]}},
        {"model": MODEL, "input": {"messages": []}},
        {"model": MODEL, "input": {"prompt": "a"}, "options": {"top_k": 3}},
        {"model": MODEL, "input": {"prompt": "a"}, "options": {"max_tokens": 0}},
        {"model": EMBEDDER, "input": {"text": "a"}, "options": {"max_tokens": 5}},
        {"model": EMBEDDER, "input": {"text": []}},
        {"model": 1, "input": {"prompt": "a"}},
    ],
)
def test_bad_bodies_are_400_and_send_nothing(client: TestClient, endpoint: RecordingServer, body: Any) -> None:
    answer = run(client, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "BadRequest"
    assert endpoint.requests == []


def test_requests_are_a_budget_per_execution(client: TestClient, kube: FakeKube, endpoint: RecordingServer) -> None:
    ai_binding(kube, "llm", endpoint.url, maxRequestsPerExecution=2)
    assert [run(client, prompt()).status_code for _ in range(3)] == [200, 200, 429]
    answer = run(client, prompt())
    assert answer.json()["error"] == {
        "code": "BudgetExceeded",
        "message": "no requests left (maxRequestsPerExecution 2)",
    }
    assert len(endpoint.requests) == 2
    assert run(client, prompt(), name="ex-b", uid="uid-b").status_code == 200, "another Execution: its own budget"
    wait_for(lambda: kube.patches and last_entry(kube)["calls"] == 4)
    entry = last_entry(kube)
    assert (entry["errors"], entry["refused"], entry["tokens"]) == (2, 0, 24)


def test_a_failed_request_still_counts_against_the_budget(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer
) -> None:
    ai_binding(kube, "llm", endpoint.url, maxRequestsPerExecution=1)
    endpoint.answer = lambda path, body: (500, {"error": {"message": "overloaded"}})
    assert run(client, prompt()).status_code == 502
    assert run(client, prompt()).status_code == 429


def test_tokens_are_a_budget_max_tokens_capped_to_what_is_left(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer
) -> None:
    """Each answer counts 12 tokens; 30 for the Execution: max_tokens 30, then 18, then 6, then none left."""
    ai_binding(kube, "llm", endpoint.url, maxTokensPerExecution=30)
    statuses = [run(client, prompt(max_tokens=100)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert [r.body["max_tokens"] for r in endpoint.requests] == [30, 18, 6]
    answer = run(client, {"model": EMBEDDER, "input": {"text": "x"}})
    assert answer.json()["error"] == {"code": "BudgetExceeded", "message": "no tokens left (maxTokensPerExecution 30)"}
    wait_for(lambda: kube.patches and last_entry(kube)["calls"] == 5)
    assert last_entry(kube)["tokens"] == 36  # the last answer passed the budget by its prompt's tokens


def test_an_answer_without_usage_is_charged_its_max_tokens(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer
) -> None:
    ai_binding(kube, "llm", endpoint.url, maxTokensPerExecution=100)
    endpoint.answer = lambda path, body: (200, {"choices": [{"message": {"content": "hi"}}]})
    assert run(client, prompt(max_tokens=60)).json()["usage"]["total_tokens"] == 60
    run(client, prompt(max_tokens=60))
    assert [r.body["max_tokens"] for r in endpoint.requests] == [60, 40]
    assert run(client, prompt()).status_code == 429


def test_an_endpoint_slower_than_the_timeout_is_504(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer
) -> None:
    ai_binding(kube, "llm", endpoint.url, requestTimeoutMs=200)
    endpoint.delay = 1.0
    started = time.monotonic()
    answer = run(client, prompt())
    assert time.monotonic() - started < 0.9
    assert answer.status_code == 504
    assert answer.json()["error"] == {
        "code": "UpstreamTimeout",
        "message": "the endpoint did not answer within 200 ms (requestTimeoutMs)",
    }
    wait_for(lambda: kube.patches and last_entry(kube)["errors"] == 1)


ECHOING_ERROR = {"error": {"message": f"model overloaded (request with key {API_KEY})", "type": "server_error"}}


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, ECHOING_ERROR, "the endpoint answered HTTP 500: model overloaded (request with key [the API key])"),
        (404, {"error": "model 'tiny-chat' not found"}, "the endpoint answered HTTP 404: model 'tiny-chat' not found"),
        (400, {"detail": "too long"}, "the endpoint answered HTTP 400: too long"),
        (503, b"<html>Bad Gateway</html>", "the endpoint answered HTTP 503: <html>Bad Gateway</html>"),
        (401, {"error": {"message": f"Incorrect API key: {API_KEY[:8]}****"}}, "refused the binding's API key"),
        (200, b"not json", "the endpoint's answer is not a JSON object"),
        (200, {"choices": []}, "the endpoint's answer has no choices[0].message"),
        (200, {"choices": [{"message": {"content": "x"}}], "usage": {"total_tokens": "many"}}, "not counts"),
    ],
)
def test_endpoint_failures_are_502_and_never_carry_the_key(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer, status: int, body: Any, message: str
) -> None:
    endpoint.answer = lambda path, request: (status, body)
    answer = run(client, prompt())
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "UpstreamError"
    assert message in answer.json()["error"]["message"]
    assert API_KEY[:8] not in answer.text
    assert "set-cookie" not in {name.lower() for name in answer.headers}


def test_malformed_embeddings_are_502(client: TestClient, endpoint: RecordingServer) -> None:
    for data in ([], [{"index": 0}], [{"embedding": [1, 2]}, {"embedding": [1]}], [{"embedding": ["a"]}]):
        endpoint.answer = lambda path, body, data=data: (200, {"data": data})  # type: ignore[misc]
        answer = run(client, {"model": EMBEDDER, "input": {"text": ["a", "b"]}})
        assert (answer.status_code, answer.json()["error"]["code"]) == (502, "UpstreamError"), data


def test_an_unreachable_endpoint_is_502(client: TestClient, kube: FakeKube) -> None:
    ai_binding(kube, "llm", "http://127.0.0.1:1/v1")
    answer = run(client, prompt())
    assert answer.status_code == 502
    assert answer.json()["error"]["message"].startswith("the endpoint could not be reached: ")


def test_no_cookie_of_one_call_goes_with_the_next(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer
) -> None:
    """The endpoint may serve several namespaces' bindings: the broker keeps nothing it sets (named by a host
    name: a cookie jar takes no cookies from an IP address)."""
    ai_binding(kube, "llm", endpoint.url.replace("127.0.0.1", "localhost"))
    run(client, prompt())
    run(client, prompt(), name="ex-b", uid="uid-b")
    assert "cookie" not in endpoint.requests[1].headers


def test_a_redirect_is_not_followed(client: TestClient, endpoint: RecordingServer) -> None:
    """The key would go along to wherever it points."""
    endpoint.answer = lambda path, body: (
        (307, {"error": "moved"}) if path != "/v1/moved" else openai_like("/v1/chat/completions", body)
    )
    answer = run(client, prompt())
    assert (answer.status_code, answer.json()["error"]["code"]) == (502, "UpstreamError")
    assert [r.path for r in endpoint.requests] == ["/v1/chat/completions"]


def test_usage_reaches_the_status_and_the_metrics(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer
) -> None:
    def tokens() -> float:
        labels = {"namespace": NAMESPACE, "binding": "llm", "engine": "ai", "model": MODEL}
        return REGISTRY.get_sample_value("codeexec_broker_tokens_total", labels) or 0.0

    before = tokens()
    run(client, prompt())
    run(client, prompt(model="other"))
    endpoint.answer = lambda path, body: (500, {"error": "boom"})
    run(client, prompt())
    wait_for(lambda: kube.patches and last_entry(kube)["calls"] == 3)
    assert last_entry(kube) == {
        "name": "llm",
        "type": "ai",
        "calls": 3,
        "errors": 1,
        "refused": 1,
        "tokens": 12,
        "lastError": "UpstreamError: the endpoint answered HTTP 500: boom",
    }
    assert tokens() - before == 12


def test_the_key_is_in_no_answer_status_event_or_log(
    client: TestClient, kube: FakeKube, endpoint: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every outcome at once, the broker logging at DEBUG: the key reached the endpoint and nothing else."""
    caplog.set_level(logging.DEBUG)
    answers = [run(client, prompt()), run(client, prompt(model="nope")), run(client, prompt(), token="x" * 43)]
    endpoint.answer = lambda path, body: (500, ECHOING_ERROR)
    answers.append(run(client, prompt()))
    endpoint.answer = lambda path, body: (401, ECHOING_ERROR)
    answers.append(run(client, prompt()))
    wait_for(lambda: kube.events and kube.patches and last_entry(kube)["calls"] == 4)
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in endpoint.requests)
    seen = [a.text + json.dumps(dict(a.headers)) for a in answers]
    seen += [json.dumps(patch) for patch in kube.patches] + [json.dumps(event) for event in kube.events]
    seen += [record.getMessage() for record in caplog.records] + [caplog.text]
    assert not [text for text in seen if API_KEY in text or API_KEY[8:20] in text]
