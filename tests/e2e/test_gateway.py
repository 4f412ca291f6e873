"""e2e: the HTTP gateway as the chart installs it, reached the way the README tells a user (`kubectl port-forward`
to its Service), over real HTTP with real service-account tokens; then the SDK over both transports and the CLI.

One release (operator and gateway) watches only this module's `e2e-gw-<id>-work` namespace. Service accounts
there: `alice` bound to the built-in `edit` role (the chart's user ClusterRole is aggregated into it), `carol` to
`view`, and `bob` to nothing. Needs the operator image (`make images`), which also runs the gateway.
About 60 s on the dev node (install 11 s; nine sandboxes, most of the rest)."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from codeexec.client import Client, InvalidRequest, WaitTimeout
from tests.e2e.executions import (
    apply,
    assert_usage,
    delete_executions,
    execution_manifest,
    install_crds_and_runtimes,
)
from tests.e2e.kube import ENV, REPO, helm, kubectl, kubectl_json, kubectl_run, wait_until

pytestmark = pytest.mark.e2e
CHART = REPO / "charts/code-exec"
RELEASE = "code-exec"
GATEWAY = f"svc/{RELEASE}-gateway"
HELLO = 'print(f"hello, {input[\'name\']}")\nreturn {"greeting": f"hello, {input[\'name\']}"}\n'
SLEEP = "import time\ntime.sleep(15)\n"
QUEUE_LIMIT = 5  # the release's gateway.maxQueuedPerNamespace


@dataclass(frozen=True)
class Gateway:
    url: str
    namespace: str  # the release's
    work: str  # the watched namespace, where the service accounts live
    tokens: dict[str, str]  # alice (edit), carol (view), bob (nothing)
    idle: str  # a namespace no operator of the release watches (alice: edit): its Executions never get a phase


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    gateway: Gateway,
    method: str,
    path: str,
    who: str | None = "alice",
    body: Any = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> Answer:
    """One HTTP request to the gateway as `who` (None: no token)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if who:
        sent["Authorization"] = f"Bearer {gateway.tokens[who]}"
    payload = data if data is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(gateway.url + path, data=payload, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            raw, status, found = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        raw, status, found = error.read(), error.code, dict(error.headers)
    return Answer(status, {k.lower(): v for k, v in found.items()}, json.loads(raw) if raw else None)


def announce_body(gateway: Gateway, length: int) -> Answer:
    """A POST /execute whose headers announce `length` bytes of body, none of which is ever sent."""
    connection = http.client.HTTPConnection(gateway.url.removeprefix("http://"), timeout=30)
    try:
        connection.putrequest("POST", "/execute")
        for name, value in (
            ("Authorization", f"Bearer {gateway.tokens['alice']}"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(length)),
        ):
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read()))
    finally:
        connection.close()


def created_second(gateway: Gateway, name: str) -> str:
    return str(kubectl_json("get", "execution", name, "-n", gateway.work)["metadata"]["creationTimestamp"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def gateway(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    install_crds_and_runtimes()
    suffix = uuid.uuid4().hex[:6]
    namespace, work, idle = f"e2e-gw-{suffix}", f"e2e-gw-{suffix}-work", f"e2e-gw-{suffix}-idle"
    for name in (namespace, work, idle):
        kubectl("create", "namespace", name)
        kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    values = {
        "operator": {"watchNamespaces": [work], "replicaCount": 1},
        "runtimeClass": {"create": False},
        "runtimes": {name: {"enabled": False} for name in ("python", "javascript", "typescript")},
        # One wait at a time per caller, so the 429 test needs only one slow Execution; five waiting
        # Executions per namespace (more than the other tests ever have waiting at once in `work`).
        "gateway": {"maxWaitsPerCaller": 1, "maxQueuedPerNamespace": QUEUE_LIMIT},
        "helmTest": {"enabled": False},
    }
    values_file = tmp_path_factory.mktemp("gateway") / "values.json"
    values_file.write_text(json.dumps(values))
    forward: subprocess.Popen[bytes] | None = None
    try:
        install = helm(
            "install", RELEASE, str(CHART), "-n", namespace, "-f", str(values_file), "--wait", "--timeout", "180s",
            check=False,
        )  # fmt: skip
        if install.returncode != 0:
            pods = kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False)
            pytest.fail(f"helm install failed: {install.stderr}\n{pods}")
        for account, role in (("alice", "edit"), ("carol", "view"), ("bob", None)):
            kubectl("create", "serviceaccount", account, "-n", work)
            if role:
                subject = f"--serviceaccount={work}:{account}"
                kubectl("create", "rolebinding", account, f"--clusterrole={role}", subject, "-n", work)
        kubectl("create", "rolebinding", "alice", "--clusterrole=edit", f"--serviceaccount={work}:alice", "-n", idle)
        tokens = {
            account: kubectl("create", "token", account, "-n", work).strip() for account in ("alice", "carol", "bob")
        }
        # The aggregation controller copies the chart's rules into edit and view within moments.
        for account, verb in (("alice", "create"), ("carol", "list")):
            who = f"--as=system:serviceaccount:{work}:{account}"
            wait_until(
                lambda who=who, verb=verb: kubectl_run("auth", "can-i", verb, "executions.codeexec.io", "-n", work, who)
                .stdout.strip() == "yes",
                30,
                f"{account} to be allowed to {verb} Executions",
            )  # fmt: skip
        port = _free_port()
        forward = subprocess.Popen(
            ["kubectl", "port-forward", "-n", namespace, GATEWAY, f"{port}:80"],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gateway = Gateway(f"http://127.0.0.1:{port}", namespace, work, tokens, idle)
        wait_until(lambda: _answers(gateway), 30, "the gateway through kubectl port-forward")
        yield gateway
    finally:
        if forward is not None:
            forward.terminate()
            forward.wait(10)
        delete_executions(work)  # while the release's operator still removes their finalizers
        helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
        for name in (work, idle, namespace):
            kubectl("delete", "namespace", name, "--wait=false", check=False)


def _answers(gateway: Gateway) -> bool:
    try:
        return call(gateway, "GET", "/health", who=None).status == 200
    except OSError:
        return False


def test_gateway_pod_has_no_rights_over_executions(gateway: Gateway) -> None:
    """The gateway's own token (projected, for /health/ready only) may read the CRDs, never Executions."""
    (pod,) = kubectl_json("get", "pods", "-n", gateway.namespace, "-l", "app.kubernetes.io/component=gateway")["items"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    mounts = [m["mountPath"] for c in pod["spec"]["containers"] for m in c.get("volumeMounts", [])]
    assert not [m for m in mounts if "serviceaccount" in m], mounts
    assert "/var/run/secrets/codeexec/readiness" in mounts
    account = f"system:serviceaccount:{gateway.namespace}:{RELEASE}-gateway"
    for verb in ("create", "get", "list"):
        allowed = kubectl_run("auth", "can-i", verb, "executions.codeexec.io", "-n", gateway.work, f"--as={account}")
        assert allowed.stdout.strip() == "no", (verb, allowed.stdout)


def test_health_and_readiness(gateway: Gateway) -> None:
    assert call(gateway, "GET", "/health", who=None).body == {"status": "ok"}
    # The CRDs and the operator Deployment are read with the gateway pod's own token: all three checks ran.
    assert call(gateway, "GET", "/health/ready", who=None).body == {
        "status": "ok",
        "checks": {"apiServer": True, "crds": True, "operator": True},
    }


def test_execute_waits_and_answers_with_the_finished_execution(gateway: Gateway) -> None:
    """Seen failing with 403 before the chart's user ClusterRole was aggregated into `edit`."""
    answer = call(gateway, "POST", "/execute", body={"code": HELLO, "language": "python", "input": {"name": "gw"}})
    assert answer.status == 200, answer.body
    result = answer.body
    assert (result["phase"], result["reason"], result["exitCode"]) == ("Succeeded", "Completed", 0)
    assert result["stdout"] == "hello, gw\n" and result["result"] == {"greeting": "hello, gw"}
    assert_usage(result)  # status.usage in the API's answer
    # The token's service-account namespace, as no ?namespace= was given; the resource is the record.
    assert result["namespace"] == gateway.work
    assert answer.headers["location"] == f"/executions/{result['id']}?namespace={gateway.work}"
    stored = kubectl_json("get", "execution", result["id"], "-n", gateway.work)
    assert stored["status"]["stdout"] == "hello, gw\n"
    again = call(gateway, "GET", f"/executions/{result['id']}")
    assert again.status == 200 and again.body["result"] == {"greeting": "hello, gw"}
    # A viewer reads it too, and so does GET with the namespace named.
    assert call(gateway, "GET", f"/executions/{result['id']}?namespace={gateway.work}", who="carol").status == 200


def test_execute_without_wait_is_202_with_a_location(gateway: Gateway) -> None:
    answer = call(gateway, "POST", "/execute", body={"code": "print(1)", "language": "py", "wait": False})
    assert answer.status == 202, answer.body
    location = answer.headers["location"]
    assert location == f"/executions/{answer.body['id']}?namespace={gateway.work}"
    assert call(gateway, "GET", location).status == 200


def test_listing_is_newest_first_with_pages_and_filters(gateway: Gateway) -> None:
    label = f"batch={uuid.uuid4().hex[:6]}"
    names = [f"list-{i}" for i in range(3)]
    for name in names:
        body = {"code": "pass", "language": "python", "name": name, "labels": {"batch": label[6:]}, "wait": False}
        assert call(gateway, "POST", "/execute", body=body).status == 202
        # creationTimestamp has whole seconds: the next one is created in a later second, so the order shows.
        created = created_second(gateway, name)
        wait_until(
            lambda created=created: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > created, 5, "a new second"
        )
    first = call(gateway, "GET", f"/executions?limit=2&labelSelector={label}").body
    assert [item["id"] for item in first["items"]] == ["list-2", "list-1"]
    assert first["total"] == 3 and first["continue"]
    second = call(gateway, "GET", f"/executions?limit=2&labelSelector={label}&continue={first['continue']}").body
    assert [item["id"] for item in second["items"]] == ["list-0"] and "continue" not in second
    by_offset = call(gateway, "GET", f"/executions?limit=1&offset=1&labelSelector={label}").body
    assert [item["id"] for item in by_offset["items"]] == ["list-1"]
    assert call(gateway, "GET", f"/executions?language=cobol&labelSelector={label}").body["items"] == []
    assert call(gateway, "GET", "/executions?phase=Exploded").status == 422


def test_errors_are_problem_documents(gateway: Gateway) -> None:
    def problem(answer: Answer, status: int, reason: str) -> dict[str, Any]:
        assert answer.status == status, answer.body
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.body["status"] == status and answer.body["reason"] == reason
        assert answer.body["type"].endswith("/" + reason)
        return dict(answer.body)

    problem(call(gateway, "GET", "/executions", who=None), 401, "Unauthorized")
    problem(
        call(gateway, "GET", "/executions", who=None, headers={"Authorization": "Bearer nope"}), 401, "Unauthorized"
    )
    # bob has no rights; alice has none in the release's namespace.
    problem(call(gateway, "POST", "/execute", who="bob", body={"code": "pass", "language": "py"}), 403, "Forbidden")
    problem(call(gateway, "GET", "/executions", who="bob"), 403, "Forbidden")
    problem(call(gateway, "GET", f"/executions?namespace={gateway.namespace}"), 403, "Forbidden")
    # carol may read, not run.
    problem(call(gateway, "POST", "/execute", who="carol", body={"code": "pass", "language": "py"}), 403, "Forbidden")
    problem(call(gateway, "GET", "/executions/absent"), 404, "NotFound")
    clash = {"code": "pass", "language": "py", "name": "clash", "wait": False}
    assert call(gateway, "POST", "/execute", body=clash).status == 202
    problem(call(gateway, "POST", "/execute", body=clash), 409, "AlreadyExists")
    # 413 from Content-Length alone: the gateway answers before any of the body is sent.
    problem(announce_body(gateway, 2 * 1024 * 1024), 413, "RequestTooLarge")
    invalid = problem(
        call(gateway, "POST", "/execute", body={"code": "pass", "language": "py", "timeoutSeconds": 0}), 422, "Invalid"
    )
    assert [e["field"] for e in invalid["errors"]] == ["timeoutSeconds"]
    # The operator's webhook refuses an unknown language: 422 with its words, and nothing is created.
    unknown = problem(call(gateway, "POST", "/execute", body={"code": "x", "language": "cobol"}), 422, "Invalid")
    assert "UnknownLanguage" in unknown["detail"]


def test_wait_beyond_the_deadline_is_504_with_the_id_and_the_execution_goes_on(gateway: Gateway) -> None:
    answer = call(gateway, "POST", "/execute", body={"code": SLEEP, "language": "py"}, headers={"Prefer": "wait=2"})
    assert answer.status == 504, answer.body
    assert answer.body["reason"] == "WaitTimeout" and answer.body["id"]
    execution_id = answer.body["id"]
    assert call(gateway, "GET", f"/executions/{execution_id}").body["phase"] in ("Pending", "Running")
    assert call(gateway, "DELETE", f"/executions/{execution_id}", who="carol").status == 403
    assert call(gateway, "DELETE", f"/executions/{execution_id}").status == 204
    wait_until(lambda: call(gateway, "GET", f"/executions/{execution_id}").status == 404, 60, "the deleted Execution")


def test_waits_beyond_the_caller_s_limit_are_429(gateway: Gateway) -> None:
    """maxWaitsPerCaller is 1 in this release: a second waiting request of alice's is refused at once."""
    code = f"{SLEEP}# {uuid.uuid4().hex}\n"
    slow: dict[str, Answer] = {}
    body = {"code": code, "language": "py"}
    waiting = threading.Thread(
        target=lambda: slow.setdefault(
            "answer", call(gateway, "POST", "/execute", body=body, headers={"Prefer": "wait=6"})
        )
    )
    waiting.start()
    try:
        # The slot is taken before the Execution is created: once it exists, the first request waits.
        wait_until(
            lambda: [
                e for e in kubectl_json("get", "executions", "-n", gateway.work)["items"] if e["spec"]["code"] == code
            ],
            10,
            "the first request's Execution",
        )
        refused = call(gateway, "POST", "/execute", body={"code": "pass", "language": "py"})
        assert refused.status == 429 and refused.body["reason"] == "TooManyRequests", refused.body
    finally:
        waiting.join(30)
    assert slow["answer"].status == 504
    # carol's own limit is untouched by alice's waits (she is refused for lack of rights, not for the limit).
    assert call(gateway, "POST", "/execute", who="carol", body={"code": "pass", "language": "py"}).status == 403


def test_a_full_namespace_queue_is_429_and_creates_nothing(gateway: Gateway) -> None:
    """maxQueuedPerNamespace is 5 in this release. No operator watches `idle`, so its Executions never get a
    phase: each one waits, as the gateway counts (a cluster whose other operators watch every namespace would
    run them, and this test would see fewer waiting)."""
    waiting = [execution_manifest(f"waits-{i}", "python", "pass") for i in range(QUEUE_LIMIT)]
    apply(gateway.idle, *waiting)

    def names() -> set[str]:
        return {e["metadata"]["name"] for e in kubectl_json("get", "executions", "-n", gateway.idle)["items"]}

    body = {"code": "pass", "language": "py", "wait": False, "name": "one-too-many"}
    refused = call(gateway, "POST", f"/execute?namespace={gateway.idle}", body=body)
    assert refused.status == 429, refused.body
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.body["reason"] == "QueueFull" and int(refused.headers["retry-after"]) > 0
    assert names() == {m["metadata"]["name"] for m in waiting}  # nothing was created
    # One fewer waiting: there is room again.
    kubectl("delete", "execution", "waits-0", "-n", gateway.idle)
    accepted = call(gateway, "POST", f"/execute?namespace={gateway.idle}", body=body)
    assert accepted.status == 202, accepted.body
    assert "one-too-many" in names()


def test_logs_stream_the_output_live_then_the_result(gateway: Gateway) -> None:
    """Server-sent events: each line while the program runs (it prints, then sleeps before the next), then the
    finished Execution. The first line arrives before the program ends, so it is live, not the final status."""
    code = "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(1)\n"
    created = call(gateway, "POST", "/execute", body={"code": code, "language": "py", "wait": False}).body
    request = urllib.request.Request(
        f"{gateway.url}/executions/{created['id']}/logs", headers={"Authorization": f"Bearer {gateway.tokens['carol']}"}
    )
    events: list[tuple[str, Any, float]] = []
    with urllib.request.urlopen(request, timeout=120) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        kind = ""
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: ")), time.monotonic()))
    outputs = [data for kind, data, _ in events if kind == "output"]
    assert outputs == ["line 0", "line 1", "line 2"], events
    (result,) = [(data, at) for kind, data, at in events if kind == "result"]
    assert result[0]["phase"] == "Succeeded" and result[0]["stdout"] == "line 0\nline 1\nline 2\n"
    first_output_at = next(at for kind, _, at in events if kind == "output")
    assert result[1] - first_output_at > 1.5, "the first line came only at the end"
    assert call(gateway, "GET", "/executions/absent/logs").status == 404


def test_languages_and_validate(gateway: Gateway) -> None:
    """Seen failing with carol's GET /languages refused (403): Runtimes are cluster-scoped, so her RoleBinding
    to `view` could not grant them until the chart bound a Runtime reader to system:authenticated."""
    languages = call(gateway, "GET", "/languages", who="carol").body
    python = next(lang for lang in languages if lang["name"] == "python")
    assert "py" in python["aliases"] and python["fileName"] == "main.py" and "image" not in python
    valid = call(gateway, "POST", "/validate", body={"code": "print(1)", "language": "py"})
    assert valid.status == 200 and valid.body == {"valid": True, "errors": []}
    bad = call(gateway, "POST", "/validate", body={"code": "x", "language": "py", "timeoutSeconds": 3000}).body
    assert bad["valid"] is False and "3000" in json.dumps(bad["errors"]), bad
    unknown = call(gateway, "POST", "/validate", body={"code": "x", "language": "cobol"}).body
    assert unknown["valid"] is False and unknown["errors"][0]["field"] == "language"
    # The syntax check runs in a sandbox (an Execution of the caller's) with each language's parser.
    for language, code, line in (
        ("python", "x = 1\ndef f(:\n    pass\n", 2),
        ("js", "const a = 1;\nlet x = ;\n", 2),
        ("ts", "let ok: number = 1;\nlet x: = 1;\n", 2),
        ("ts", "let n: number = input.n;\nlet s: string = n;\nconsole.log(s);\n", 2),  # a type error
    ):
        checked = call(gateway, "POST", "/validate", body={"code": code, "language": language}).body
        assert checked["valid"] is False, (language, checked)
        (error,) = checked["errors"]
        assert (error["field"], error["line"]) == ("code", line), (language, checked)
    top_level = call(gateway, "POST", "/validate", body={"code": "await f()\nreturn 1\n", "language": "py"}).body
    assert top_level == {"valid": True, "errors": []}, top_level
    # Nothing was created by validating (the dry run leaves no Execution).
    listed = kubectl_json("get", "executions", "-n", gateway.work)["items"]
    assert not [e for e in listed if e["spec"]["code"] == "x"]


def test_openapi_document_names_every_endpoint(gateway: Gateway) -> None:
    paths = call(gateway, "GET", "/openapi.json", who=None).body["paths"]
    assert {"/execute", "/validate", "/executions", "/executions/{execution_id}", "/languages", "/health"} <= set(paths)
    # The interactive docs come from the image itself (an air-gapped cluster has no CDN).
    with urllib.request.urlopen(gateway.url + "/docs", timeout=30) as page:
        assert b"/docs/assets/swagger-ui-bundle.js" in page.read()
    with urllib.request.urlopen(gateway.url + "/docs/assets/swagger-ui-bundle.js", timeout=30) as script:
        assert len(script.read()) > 500_000


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium (Debian's; `make cluster` installs it) behind a proxy that does not exist: every request
    but to the loopback address (the port-forward) fails, so a page that needs any other host cannot render."""
    binary = shutil.which("chromium")
    assert binary, "chromium is missing: `make cluster` installs it"
    isolated = ["--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=http://127.0.0.1:9", "--no-first-run"]
    return subprocess.run([binary, *isolated, *args], capture_output=True, text=True, timeout=120)


def test_docs_render_in_headless_chromium_from_the_gateway_alone(gateway: Gateway, tmp_path: Path) -> None:
    """Swagger UI is drawn by its JavaScript: the rendered DOM lists the operations only when the script and
    /openapi.json came from the gateway (seen failing, the page empty, with FastAPI's CDN-loaded /docs)."""
    rendered = chromium("--virtual-time-budget=15000", "--dump-dom", gateway.url + "/docs")
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    dom = rendered.stdout
    assert "opblock-summary-path" in dom, dom[:2000]
    for path in ("/execute", "/validate", "/executions/{execution_id}", "/languages"):
        assert f'data-path="{path}"' in dom, path
    screenshot = tmp_path / "docs.png"
    shot = chromium(
        "--virtual-time-budget=15000", "--window-size=1280,1100", f"--screenshot={screenshot}", gateway.url + "/docs"
    )
    assert shot.returncode == 0 and screenshot.stat().st_size > 20_000, shot.stderr[-2000:]


def test_sdk_over_both_transports(gateway: Gateway) -> None:
    """The same calls through the gateway (alice's token) and through the Kubernetes API (the admin kubeconfig)."""
    with (
        Client(gateway_url=gateway.url, token=gateway.tokens["alice"]) as over_http,
        Client(kubeconfig=ENV["KUBECONFIG"], namespace=gateway.work) as over_kube,
    ):
        for client in (over_http, over_kube):
            result = client.execute_code(HELLO, "python", {"name": "sdk"}, {"timeout_seconds": 20})
            assert result.succeeded and result.result == {"greeting": "hello, sdk"}, result
            assert client.get_execution(result.id).stdout == "hello, sdk\n"
            assert client.list_executions(limit=1).items[0].id == result.id
            assert client.is_supported_language("py") and not client.is_supported_language("cobol")
            with pytest.raises(InvalidRequest) as invalid:
                client.execute_code("x", "python", config={"timeoutSeconds": 0})
            assert invalid.value.errors[0].field == "timeoutSeconds"
        with pytest.raises(WaitTimeout) as late:
            over_http.execute_code(SLEEP, "python", wait_seconds=1)
        assert late.value.execution_id
        over_http.delete_execution(late.value.execution_id)


def test_cli_runs_a_file_with_its_exit_code_and_streams(gateway: Gateway, tmp_path: Path) -> None:
    program = tmp_path / "fail.py"
    program.write_text('import sys\nprint("to stdout", input["n"])\nprint("to stderr", file=sys.stderr)\nsys.exit(3)\n')
    token = tmp_path / "token"
    token.write_text(gateway.tokens["alice"])
    cli = [sys.executable, "-c", "from codeexec.cli import main; main()"]
    over_http = ["--gateway", gateway.url, "--token-file", str(token)]
    over_kube = ["-n", gateway.work]
    for transport in (over_http, over_kube):
        done = subprocess.run(
            [*cli, "run", str(program), "--input", '{"n": 7}', *transport], capture_output=True, text=True, env=ENV
        )
        assert done.returncode == 3, done.stderr
        assert done.stdout == "to stdout 7\n"
        assert done.stderr.startswith("to stderr\n") and "NonZeroExit" in done.stderr
    listed = subprocess.run([*cli, "ls", "-o", "json", "--limit", "1", *over_http], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["items"][0]["exitCode"] == 3
    refused = subprocess.run([*cli, "run", str(program), "-l", "cobol", *over_http], capture_output=True, text=True)
    assert refused.returncode == 2 and "UnknownLanguage" in refused.stderr
