"""e2e: the `ai` binding (issue 12) against a real model server: operator and broker of one release watching only
this module's `e2e-ai-<id>-work` namespace, sandboxes calling the broker through their harness (Python, JavaScript),
and llama.cpp's OpenAI-compatible server over Gemma 3 270M (localhost/codeexec/e2e-llm, a small base model: its
chat output is mostly echo, but it generates, embeds and counts real tokens) as a pod and Service in the release
namespace, requiring the API key that the SandboxBindings name in a Secret.

The security tests: a model the binding does not allow is refused before anything reaches the server; request and
token budgets per Execution; the API key reaches nothing of the sandbox (Execution, its ConfigMap and Secret, the pod,
the program's environment and files) while the server refuses calls without it; the sandbox cannot reach the server
but through the broker; a wrong key's UpstreamError does not quote it.
Needs the operator image (it also runs the broker) and the e2e-llm image (`hack/build-images.sh`). 65-140 s on the
shared dev node, as loaded (seven sandboxes, generations of at most 8 tokens).

Each security test was seen failing with its safeguard removed: in the broker (an operator image built from 0.1.0
with the break) the allowed-models check (the call reached the server: its log counted it), the request budget
not taken (the third call answered), the key returned in an answer (found in the Execution), the 401 message quoting
the key it sent; in this module, the server run without API_KEY (the keyless call answered) and a NetworkPolicy
letting sandboxes reach the server's pod (both targets connected). One letting them reach everything is caught
earlier, by the runner's own check that a NetworkPolicy enforcer isolates it (the Execution fails)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.binding_kit import (
    BROKER,
    CHART,
    RELEASE,
    binding_usage,
    create_objects,
    listening,
    only_pod,
    ready_pod,
    run_one,
    succeeded,
    unique_name,
)
from tests.e2e.executions import (
    EXECUTION_UID_LABEL,
    apply,
    delete_executions,
    execution_manifest,
    get_execution,
    install_crds_and_runtimes,
    run_all,
    uid,
    wait_finished,
)
from tests.e2e.kube import helm, kubectl, kubectl_json, wait_until

pytestmark = pytest.mark.e2e
MODEL = "gemma-3-270m"  # the server's alias of its model, and the only one the bindings allow
API_KEY = "sk-e2e-" + uuid.uuid4().hex
WRONG_KEY = "sk-e2e-wrong-" + uuid.uuid4().hex
# Gemma 3 270M's embedding width.
EMBEDDING_DIM = 640
# Lines of the server's log for each request it handled: a task run (generation or embedding), or a refused key.
SERVED = ("launch_slot_", "unauthorized")


@dataclass(frozen=True)
class Release:
    namespace: str  # the operator's, the broker's and the model server's
    work: str  # the only namespace the release watches: Executions, SandboxBindings and the key's Secrets
    llm_ip: str  # the model server pod's
    llm_service: str  # its Service's clusterIP

    @property
    def endpoint(self) -> str:
        return f"http://{self.llm_service}:8080/v1"


def _model_server(namespace: str) -> list[dict[str, Any]]:
    """The model server as a pod (runc, restricted) and its Service; it requires API_KEY."""
    labels = {"app": "e2e-llm"}
    container = {
        "name": "llm",
        "image": "localhost/codeexec/e2e-llm:0.1.0",
        "imagePullPolicy": "Never",
        "env": [{"name": "API_KEY", "value": API_KEY}],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 1},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "llm", "namespace": namespace, "labels": labels},
        "spec": {"containers": [container], "automountServiceAccountToken": False},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "llm", "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": 8080}]},
    }
    return [pod, service]


def _binding(name: str, endpoint: str, **ai: Any) -> dict[str, Any]:
    return {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "SandboxBinding",
        "metadata": {"name": name},
        "spec": {"ai": {"endpoint": endpoint, "models": [MODEL], **ai}},
    }


@pytest.fixture(scope="module")
def release(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    install_crds_and_runtimes()
    suffix = uuid.uuid4().hex[:6]
    namespace, work = f"e2e-ai-{suffix}", f"e2e-ai-{suffix}-work"
    for name in (namespace, work):
        kubectl("create", "namespace", name)
        kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    values = {
        "operator": {"watchNamespaces": [work], "replicaCount": 1},
        "runtimeClass": {"create": False},
        "runtimes": {name: {"enabled": False} for name in ("python", "javascript", "typescript")},
        "gateway": {"enabled": False},
        "helmTest": {"enabled": False},
    }
    values_file = tmp_path_factory.mktemp("bindings-ai") / "values.json"
    values_file.write_text(json.dumps(values))
    try:
        create_objects(*_model_server(namespace))
        install = helm(
            "install", RELEASE, str(CHART), "-n", namespace, "-f", str(values_file), "--wait", "--timeout", "180s",
            check=False,
        )  # fmt: skip
        if install.returncode != 0:
            pods = kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)
            pytest.fail(f"helm install failed: {install.stderr}\n{pods}")
        wait_until(lambda: ready_pod(namespace, "app=e2e-llm"), 120, "the model server to be ready")
        llm_service = kubectl_json("get", "service", "llm", "-n", namespace)["spec"]["clusterIP"]
        kubectl("create", "secret", "generic", "llm-key", "-n", work, f"--from-literal=key={API_KEY}")
        kubectl("create", "secret", "generic", "llm-wrong", "-n", work, f"--from-literal=key={WRONG_KEY}")
        endpoint = f"http://{llm_service}:8080/v1"
        key, wrong = {"name": "llm-key", "key": "key"}, {"name": "llm-wrong", "key": "key"}
        for binding in (
            _binding("llm", endpoint, apiKeySecretRef=key),
            _binding("llm-two", endpoint, apiKeySecretRef=key, maxRequestsPerExecution=2),
            _binding("llm-tokens", endpoint, apiKeySecretRef=key, maxTokensPerExecution=10),
            _binding("llm-nokey", endpoint),
            _binding("llm-wrongkey", endpoint, apiKeySecretRef=wrong),
        ):
            apply(work, binding)
        yield Release(namespace, work, only_pod(namespace, "app=e2e-llm")["status"]["podIP"], llm_service)
    finally:
        delete_executions(work)  # while the release's operator still removes their finalizers
        helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
        for name in (work, namespace):
            kubectl("delete", "namespace", name, "--wait=false", check=False)


def _served(release: Release) -> int:
    """How many requests the model server has handled so far (its log)."""
    log = kubectl("logs", "llm", "-n", release.namespace)
    return sum(1 for line in log.splitlines() if any(mark in line for mark in SERVED))


PY_CALLS = """
run = ai.run(input["model"], {"prompt": "The capital of France is"}, max_tokens=8)
reply = ai.chat(input["model"], [{"role": "user", "content": "Name a colour."}], max_tokens=8)
vectors = ai.run(input["model"], {"text": ["one", "two", "three"]})
return {"run": run, "chat": reply, "shape": vectors["shape"], "dims": [len(v) for v in vectors["data"]],
        "embedding_usage": vectors["usage"]}
"""
JS_CALLS = """
const run = await ai.run(input.model, { prompt: "The capital of France is" }, { max_tokens: 8 });
const reply = await ai.chat(input.model, [{ role: "user", content: "Name a colour." }], { max_tokens: 8 });
const vectors = await ai.run(input.model, { text: ["one", "two", "three"] });
return { run, chat: reply, shape: vectors.shape, dims: vectors.data.map((v) => v.length),
         embedding_usage: vectors.usage };
"""


def test_generation_chat_and_embeddings_per_language(release: Release) -> None:
    """Python and JavaScript generate (at most 8 tokens), chat and embed three texts through the broker; the model's
    own token counts come back and status.bindings adds them up (with the chat's, which the code does not see)."""
    names = {"python": unique_name("ai-py"), "javascript": unique_name("ai-js")}
    codes = {"python": PY_CALLS, "javascript": JS_CALLS}
    manifests = [
        execution_manifest(name, language, codes[language], bindings=["llm"], input={"model": MODEL})
        for language, name in names.items()
    ]
    finished = run_all(release.work, manifests)
    for language, name in names.items():
        result = succeeded(finished[name])["result"]
        run, usage = result["run"], result["run"]["usage"]
        assert isinstance(run["response"], str) and run["response"].strip(), (language, result)
        assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8, (language, result)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"], (language, result)
        assert isinstance(result["chat"], str), (language, result)
        assert result["shape"] == [3, EMBEDDING_DIM] and result["dims"] == [EMBEDDING_DIM] * 3, (language, result)
        embedded = result["embedding_usage"]["total_tokens"]
        assert embedded > 0, (language, result)
        entry = binding_usage(release.work, name, "llm", calls=3, errors=0, refused=0)
        assert entry["type"] == "ai" and entry["tokens"] > usage["total_tokens"] + embedded, (language, entry)


# attempt(): one generation's total tokens, or its error as [code, status, message].
ATTEMPT = """
def attempt(client, model, prompt, **options):
    try:
        return client.run(model, {"prompt": prompt}, **options)["usage"]["total_tokens"]
    except BindingError as error:
        return [error.code, error.status, str(error)]
"""
NOT_ALLOWED = (
    ATTEMPT
    + """
return {"refused": attempt(ai, "gpt-4o", "Hi", max_tokens=2),
        "allowed": attempt(ai, input["model"], "Hi", max_tokens=2)}
"""
)


def test_a_model_not_allowed_is_refused_before_the_server(release: Release) -> None:
    """`gpt-4o` is not in the binding's models: 403 ModelNotAllowed, a BindingRefused Event, no token counted for
    it, and the server's log shows one request for the Execution: its allowed call, not the refused one."""
    name = unique_name("ai-model")
    before = _served(release)
    manifest = execution_manifest(name, "python", NOT_ALLOWED, bindings=["llm"], input={"model": MODEL})
    result = run_one(release.work, manifest)["result"]
    assert result["refused"] == [
        "ModelNotAllowed",
        403,
        "ModelNotAllowed: the binding 'llm' does not allow the model 'gpt-4o'",
    ], result
    assert isinstance(result["allowed"], int) and result["allowed"] > 0, result
    assert _served(release) == before + 1
    binding_usage(release.work, name, "llm", calls=2, refused=1, errors=0, tokens=result["allowed"])
    events = kubectl_json("get", "events", "-n", release.work, "--field-selector", f"involvedObject.name={name}")
    assert any(event["reason"] == "BindingRefused" for event in events["items"]), events["items"]


BUDGETS = (
    ATTEMPT
    + """
two, tokens = bindings["llm-two"], bindings["llm-tokens"]
return {
    "requests": [attempt(two, input["model"], "Count: one, two,", max_tokens=4) for _ in range(3)],
    "tokens": [attempt(tokens, input["model"], "Count: one, two,", max_tokens=4) for _ in range(2)],
}
"""
)


def test_request_and_token_budgets_per_execution(release: Release) -> None:
    """llm-two allows 2 requests per Execution: the third is 429 BudgetExceeded. llm-tokens allows 10 tokens: the
    first call (its prompt alone is more) passes them, the next is refused."""
    name = unique_name("ai-budget")
    bindings = ["llm-two", "llm-tokens"]
    manifest = execution_manifest(name, "python", BUDGETS, bindings=bindings, input={"model": MODEL})
    result = run_one(release.work, manifest)["result"]
    first, second, third = result["requests"]
    assert isinstance(first, int) and isinstance(second, int) and first > 0 and second > 0, result
    assert third == [
        "BudgetExceeded",
        429,
        "BudgetExceeded: no requests left (maxRequestsPerExecution 2)",
    ], result
    spent, refused = result["tokens"]
    assert isinstance(spent, int) and spent > 10, result
    assert refused == ["BudgetExceeded", 429, "BudgetExceeded: no tokens left (maxTokensPerExecution 10)"], result
    binding_usage(release.work, name, "llm-two", calls=3, errors=1, tokens=first + second)
    binding_usage(release.work, name, "llm-tokens", calls=2, errors=1, tokens=spent)


# The program's view: its environment and every file under /code, printed; then it lingers while the
# test reads the sandbox's objects.
DUMP = """
import json, os, pathlib, time
answer = bindings["llm"].run(input["model"], {"prompt": "Hello"}, max_tokens=4)
files = {str(path): path.read_bytes().decode("latin-1") for path in pathlib.Path("/code").rglob("*") if path.is_file()}
print(json.dumps({"environ": dict(os.environ), "files": files}))
try:
    bindings["llm-nokey"].run(input["model"], {"prompt": "Hello"}, max_tokens=4)
    without_key = "answered"
except BindingError as error:
    without_key = [error.code, error.status, str(error)]
time.sleep(input["linger"])
return {"answer": answer, "without_key": without_key}
"""


def _decoded(secret: dict[str, Any]) -> str:
    return json.dumps({key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()})


def test_the_api_key_never_reaches_the_sandbox(release: Release) -> None:
    """The key is used (the code's call through llm is answered; through llm-nokey, which sends none, the server
    refuses it, as it refuses this host without it) and is nowhere the sandbox or its owner sees: the Execution,
    the sandbox's ConfigMap and Secret (bindings.json), its pod, the program's environment and the files
    under /code; nor in the broker's log or the namespace's Events."""
    name = unique_name("ai-key")
    manifest = execution_manifest(
        name, "python", DUMP, bindings=["llm", "llm-nokey"], input={"model": MODEL, "linger": 8}
    )
    apply(release.work, manifest)

    def running() -> dict[str, Any] | None:
        execution = get_execution(release.work, name)
        return execution if execution.get("status", {}).get("phase") == "Running" else None

    selector = f"{EXECUTION_UID_LABEL}={uid(wait_until(running, 60, f'{name} to run'))}"
    sandbox = {
        kind: kubectl_json("get", kind, "-n", release.work, "-l", selector)["items"]
        for kind in ("pods", "configmaps", "secrets")
    }
    assert [len(items) for items in sandbox.values()] == [1, 1, 1], sandbox
    delivered = json.loads(json.loads(_decoded(sandbox["secrets"][0]))["bindings.json"])
    status = succeeded(wait_finished(release.work, name))
    assert isinstance(status["result"]["answer"]["response"], str), status
    assert status["result"]["without_key"] == [
        "UpstreamError",
        502,
        "UpstreamError: the endpoint refused the binding's API key (HTTP 401)",
    ], status
    seen = json.loads(status["stdout"])
    assert seen["environ"]["CODEEXEC_BINDING_TOKEN"] == delivered["token"], seen  # the dump is the program's
    assert "/code/bindings.json" in seen["files"], seen["files"].keys()
    broker_log = kubectl("logs", "-n", release.namespace, "-l", BROKER, "--tail=-1")
    events = kubectl("get", "events", "-n", release.work, "-o", "json")
    places = {
        "execution": json.dumps(get_execution(release.work, name)),
        "pod": json.dumps(sandbox["pods"]),
        "configmap": json.dumps(sandbox["configmaps"]),
        "secret": _decoded(sandbox["secrets"][0]) + json.dumps(sandbox["secrets"]),
        "program": status["stdout"],
        "broker_log": broker_log,
        "events": events,
    }
    assert [place for place, text in places.items() if API_KEY in text] == []
    assert _without_key(release) == 401


def _without_key(release: Release) -> int:
    """The HTTP status of the model server's answer to a generation asked from this host without a key."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}).encode()
    request = urllib.request.Request(
        f"http://{release.llm_ip}:8080/v1/chat/completions",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


# Direct connections to the model server, and one call through the broker.
REACH = """
import concurrent.futures, socket

def attempt(target):
    try:
        socket.create_connection((target[0], target[1]), timeout=3).close()
    except socket.timeout:
        return "timeout"
    except OSError as error:
        return type(error).__name__
    return "connected"

with concurrent.futures.ThreadPoolExecutor(len(input["targets"])) as pool:
    direct = dict(zip(input["targets"], pool.map(attempt, input["targets"].values())))
return {"direct": direct, "broker": ai.run(input["model"], {"prompt": "Hi"}, max_tokens=2)["usage"]["total_tokens"]}
"""


def test_the_sandbox_reaches_the_model_only_through_the_broker(release: Release) -> None:
    """The model server's pod and Service listen (seen from this host), yet code with the binding cannot connect to
    either, while its call through the broker is answered."""
    targets = {"llm_pod": [release.llm_ip, 8080], "llm_service": [release.llm_service, 8080]}
    for label, (address, port) in targets.items():
        assert listening(address, port), f"{label} {address}:{port} does not listen: the test proves nothing"
    manifest = execution_manifest(
        unique_name("ai-reach"), "python", REACH, bindings=["llm"], input={"model": MODEL, "targets": targets}
    )
    result = run_one(release.work, manifest)["result"]
    assert "connected" not in result["direct"].values(), result
    assert result["broker"] > 0, result


WRONG = (
    ATTEMPT
    + """
return attempt(bindings["llm-wrongkey"], input["model"], "Hi", max_tokens=2)
"""
)


def test_a_wrong_key_is_an_upstream_error_that_does_not_quote_it(release: Release) -> None:
    """llm-wrongkey's Secret holds a key the server does not know: 502 UpstreamError, and neither that key nor the
    right one is in the message, status.bindings (lastError), the Events or the broker's log."""
    name = unique_name("ai-wrong")
    manifest = execution_manifest(name, "python", WRONG, bindings=["llm-wrongkey"], input={"model": MODEL})
    result = run_one(release.work, manifest)["result"]
    assert result == [
        "UpstreamError",
        502,
        "UpstreamError: the endpoint refused the binding's API key (HTTP 401)",
    ], result
    entry = binding_usage(release.work, name, "llm-wrongkey", calls=1, errors=1, tokens=0)
    assert entry["lastError"] == result[2], entry
    places = {
        "result": json.dumps(result),
        "execution": json.dumps(get_execution(release.work, name)),
        "events": kubectl("get", "events", "-n", release.work, "-o", "json"),
        "broker_log": kubectl("logs", "-n", release.namespace, "-l", BROKER, "--tail=-1"),
    }
    assert [place for place, text in places.items() for key in (WRONG_KEY, API_KEY) if key in text] == []
