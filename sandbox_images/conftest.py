"""Shared fixtures for the sandbox image tests: the runner built like the images build it, run on the host."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from codeexec_runner.contract import REPORT_PREFIX, RUNNER_PATH, WARM_ACCEPTED, ReportDict, WarmRequestDict

SANDBOX_IMAGES = Path(__file__).resolve().parent
RUNNER_PACKAGE = SANDBOX_IMAGES / "runner" / "codeexec_runner"
# Where the images' Dockerfiles copy the package before zipping it.
IMAGE_BUILD_DIR = "/tmp/codeexec-runner"
NO_INPUT = object()


def zipapp_command(source: Path | str, output: Path | str) -> list[str]:
    """How the images build the runner: `source` holds codeexec_runner/; `output` becomes one executable file."""
    return [
        "python3",
        "-m",
        "zipapp",
        str(source),
        *("--python", "/usr/bin/python3 -I", "--main", "codeexec_runner.__main__:main"),
        *("--output", str(output)),
    ]


@dataclass
class RunResult:
    returncode: int
    stdout: bytes  # the runner's own stdout: live passthrough plus the report line
    stderr: bytes
    report: dict[str, Any]
    elapsed: float

    def after_acknowledgement(self) -> bytes:
        """Warm mode: stdout after the acknowledgement, which must be its very first bytes."""
        assert self.stdout.startswith(WARM_ACCEPTED), f"no acknowledgement first: {self.stdout[:200]!r}"
        return self.stdout[len(WARM_ACCEPTED) :]


def parse_report(stdout: bytes) -> dict[str, Any]:
    """The report as the operator reads it: the last line, and only if it is the final bytes."""
    assert stdout.endswith(b"\n"), f"runner stdout does not end with a newline: {stdout[-200:]!r}"
    last = stdout[:-1].rpartition(b"\n")[2]
    assert last.startswith(REPORT_PREFIX), f"last line is not a report: {last[:200]!r}"
    report = json.loads(last[len(REPORT_PREFIX) :])
    assert set(report) == ReportDict.__required_keys__
    return report


RunFn = Callable[..., RunResult]


@pytest.fixture(scope="session")
def runner() -> Iterator[Path]:
    """The runner as the images carry it: the package zipped into one executable file, readable by uid 65534."""
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp)
        build.chmod(0o755)
        shutil.copytree(
            RUNNER_PACKAGE, build / "src" / RUNNER_PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__")
        )
        zipapp = build / "runner"
        subprocess.run(zipapp_command(build / "src", zipapp), check=True)
        zipapp.chmod(0o755)
        yield zipapp


@pytest.fixture(scope="session")
def image_zipapp_command() -> list[str]:
    """The command every sandbox Dockerfile must run (runner/tests/test_runner_images.py): the one the tests run."""
    return zipapp_command(IMAGE_BUILD_DIR, RUNNER_PATH)


@pytest.fixture
def run_runner(tmp_path: Path, runner: Path) -> RunFn:
    """Runs the runner like the pod does: code files in a folder, the program after `--`."""

    def run(
        command: list[str],
        *,
        timeout: float = 10,
        max_output: int = 65536,
        stdin: bytes | None = None,
        input: Any = NO_INPUT,
        env: dict[str, str] | None = None,
        bindings: Any = None,
        runner_env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
        files: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> RunResult:
        args = ["--timeout-seconds", str(timeout), "--max-output-bytes", str(max_output), *(extra_args or [])]
        if stdin is not None:
            (tmp_path / "stdin").write_bytes(stdin)
            args += ["--stdin", str(tmp_path / "stdin")]
        if input is not NO_INPUT:
            (tmp_path / "input.json").write_text(json.dumps(input))
            args += ["--input", str(tmp_path / "input.json")]
        if env is not None:
            (tmp_path / "env.json").write_text(json.dumps(env))
            args += ["--env-file", str(tmp_path / "env.json")]
        if bindings is not None:  # a BindingsFileDict, or anything else to see the runner refuse it
            (tmp_path / "bindings.json").write_text(json.dumps(bindings))
            args += ["--bindings-file", str(tmp_path / "bindings.json")]
        for name, text in (files or {}).items():
            (tmp_path / name).write_text(text)
        started = time.monotonic()
        proc = subprocess.run(
            [*(prefix or []), str(runner), *args, "--", *command],
            capture_output=True,
            env=runner_env if runner_env is not None else {"PATH": os.environ["PATH"]},
            cwd=tmp_path,
            timeout=timeout + 30,
        )
        elapsed = time.monotonic() - started
        return RunResult(proc.returncode, proc.stdout, proc.stderr, parse_report(proc.stdout), elapsed)

    return run


def _warm_request(
    code: str,
    *,
    file_name: str = "main.py",
    input: Any = None,
    stdin: str = "",
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    timeout: float = 10,
) -> bytes:
    """One request line as the operator writes it to a warm pod's stdin."""
    request: WarmRequestDict = {
        "fileName": file_name,
        "code": code,
        "input": input,
        "stdin": stdin,
        "env": env or {},
        "args": args or [],
        "timeoutSeconds": timeout,
    }
    return json.dumps(request).encode("ascii") + b"\n"


class WarmRun:
    """A runner started with --warm: wait until its ready file exists, write its stdin, collect its outcome."""

    def __init__(self, proc: subprocess.Popen[bytes], warm_dir: Path) -> None:
        self.proc = proc
        self.warm_dir = warm_dir
        self.ready_file = warm_dir / "ready"

    def wait_ready(self, deadline: float = 20) -> None:
        give_up = time.monotonic() + deadline
        while not self.ready_file.exists():
            assert self.proc.poll() is None, f"the runner exited before it was ready: {self.proc.communicate()}"
            assert time.monotonic() < give_up, f"no ready file after {deadline} s"
            time.sleep(0.01)

    def harness_pid(self) -> int:
        """The pre-started harness: the runner's only child while it waits."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def finish(self, stdin: bytes = b"", timeout: float = 30) -> RunResult:
        """Writes `stdin` (then EOF) and waits for the runner's exit; `elapsed` counts from the write."""
        started = time.monotonic()
        stdout, stderr = self.proc.communicate(stdin, timeout=timeout)
        elapsed = time.monotonic() - started
        return RunResult(self.proc.returncode, stdout, stderr, parse_report(stdout), elapsed)


StartWarmFn = Callable[..., WarmRun]


@pytest.fixture
def start_warm(tmp_path: Path, runner: Path) -> Iterator[StartWarmFn]:
    """Starts the runner like a warm pool pod: --warm, the harness command after `--`, stdin a pipe."""
    started: list[WarmRun] = []

    def start(
        command: list[str],
        *,
        max_output: int = 65536,
        extra_args: list[str] | None = None,
        prefix: list[str] | None = None,
        runner_env: dict[str, str] | None = None,
        warm_dir: Path | None = None,
    ) -> WarmRun:
        warm_dir = warm_dir or tmp_path / f"warm{len(started)}"  # one each: a pod's /tmp is its own
        args = ["--warm", "--warm-dir", str(warm_dir), "--max-output-bytes", str(max_output), *(extra_args or [])]
        proc = subprocess.Popen(
            [*(prefix or []), str(runner), *args, "--", *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=runner_env if runner_env is not None else {"PATH": os.environ["PATH"]},
            cwd=tmp_path,
        )
        started.append(WarmRun(proc, warm_dir))
        return started[-1]

    yield start
    for run in started:  # a failed test must not leave a runner waiting forever
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.communicate()


@pytest.fixture
def warm_request() -> Callable[..., bytes]:
    """Builds one request line (code, then keyword overrides of the WarmRequestDict's fields)."""
    return _warm_request


@pytest.fixture
def pid1_prefix() -> list[str]:
    """Makes the runner PID 1 of a new PID namespace, as in a container."""
    _require_root_and("unshare")
    return ["unshare", "--pid", "--fork", "--mount-proc"]


@pytest.fixture
def nobody_prefix() -> list[str]:
    """Runs the runner as uid 65534 like the pods do (root could read any process's /proc files)."""
    _require_root_and("setpriv")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _require_root_and(tool: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: runs the runner in its own PID namespace or as another user")
    if shutil.which(tool) is None:
        pytest.skip(f"needs {tool} from util-linux")


class _TestApi(http.server.BaseHTTPRequestHandler):
    """GET /json, /text, /empty-json, /missing (404, JSON), /broken (500, text); POST or PUT echoes (JSON,
    application/problem+json on /problem)."""

    def do_GET(self) -> None:
        routes = {
            "/json": (200, "application/json", b'{"hello": "world", "n": [1, 2]}'),
            "/text": (200, "text/plain; charset=utf-8", "caf\u00e9".encode()),
            "/empty-json": (204, "application/json", b""),
            "/missing": (404, "application/json", b'{"error": "no such thing"}'),
            "/broken": (500, "text/plain", b"it broke"),
        }
        self._send(*routes.get(self.path, (404, "text/plain", b"unknown path")))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        echo = {"path": self.path, "contentType": self.headers.get("Content-Type"), "body": body}
        self._send(
            200,
            "application/problem+json" if self.path == "/problem" else "application/json",
            json.dumps(echo).encode(),
        )

    do_PUT = do_POST

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    """Base URL of a small HTTP API on 127.0.0.1 for the harnesses' `api` helper."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TestApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class FakeBroker:
    """A stand-in for the bindings broker, for the harnesses' `db` and `ai` clients: NOT the broker
    (operator/codeexec/broker; the e2e tests exercise that one). It checks each request's wire format (path,
    headers, JSON body) as the broker's API defines it, records it and answers in the broker's format: `db` runs the
    SQL on an in-memory sqlite3; `ai` infers nothing (no model here): a prompt or messages get
    "echo: <the last content>", texts get the vectors [len(text), 1.0]. The db binding `notes` and the ai binding
    `llm` (models AI_MODELS, else 403 ModelNotAllowed) are granted, any other name is 403 NotGranted; a wrong token
    or execution is 401 Unauthorized; a malformed request is 400 BadRequest naming what was wrong."""

    url: str
    token: str
    execution: str
    requests: list[dict[str, Any]]  # {"path", "headers" (lower-case names), "body"} of every request

    def bindings_file(self, bindings: dict[str, str]) -> dict[str, Any]:
        """A bindings file (contract.BindingsFileDict) pointing at this broker."""
        return {"url": self.url, "token": self.token, "execution": self.execution, "bindings": bindings}


AI_MODELS = ("tiny-chat", "tiny-embed")
FAKE_USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


class _FakeBrokerHandler(http.server.BaseHTTPRequestHandler):
    server: _FakeBrokerServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.server.broker.requests.append(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        )
        try:
            self._send(200, self._answer(body))
        except _Refusal as refusal:
            self._send(refusal.status, {"error": {"code": refusal.code, "message": refusal.message}})

    def _answer(self, body: Any) -> dict[str, Any]:
        broker = self.server.broker
        if self.headers.get("Authorization") != f"Bearer {broker.token}":
            raise _Refusal(401, "Unauthorized", "not authorized")
        if self.headers.get("X-Codeexec-Execution") != broker.execution:
            raise _Refusal(401, "Unauthorized", "not authorized")
        if self.headers.get("Content-Type") != "application/json":
            raise _Refusal(400, "BadRequest", f"Content-Type {self.headers.get('Content-Type')!r}")
        parts = self.path.split("/")  # "", "v1", kind, binding, action
        kind, binding, action = parts[2:] if len(parts) == 5 and parts[:2] == ["", "v1"] else ("", "", "")
        if (kind, action) not in (("db", "query"), ("db", "exec"), ("ai", "run")):
            raise _Refusal(404, "BadRequest", f"no such path {self.path}")
        if binding != {"db": "notes", "ai": "llm"}[kind]:
            raise _Refusal(403, "NotGranted", f"binding {binding!r} is not granted to this Execution")
        if kind == "ai":
            return self._run(body)
        keys = {"sql", "params", "mode"} if action == "query" else {"sql"}
        if not isinstance(body, dict) or set(body) != keys or not isinstance(body["sql"], str):
            raise _Refusal(400, "BadRequest", f"the body must be a JSON object with exactly {sorted(keys)}")
        if action == "exec":
            return self._exec(body["sql"])
        if body["mode"] not in ("all", "first", "run") or not isinstance(body["params"], list):
            raise _Refusal(400, "BadRequest", "mode must be all, first or run; params a list")
        return self._query(body["sql"], body["params"], body["mode"])

    def _query(self, sql: str, params: list[Any], mode: str) -> dict[str, Any]:
        database = self.server.database
        try:
            cursor = database.execute(sql, params)
            rows = cursor.fetchmany(1) if mode == "first" else cursor.fetchall()
            database.commit()
        except sqlite3.Error as error:
            raise _Refusal(400, "SqlError", str(error)) from None
        columns = [column[0] for column in cursor.description or ()]
        results = [] if mode == "run" else [dict(zip(columns, row, strict=True)) for row in rows]
        changes = max(cursor.rowcount, 0)
        meta = {
            "changes": changes,
            "lastRowId": cursor.lastrowid,
            "rowsRead": len(rows),
            "rowsWritten": changes,
            "durationMs": 0.5,
        }
        return {"results": results, "meta": meta}

    def _run(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or set(body) != {"model", "input", "options"}:
            raise _Refusal(400, "BadRequest", "the body must be a JSON object with exactly model, input, options")
        model, given, options = body["model"], body["input"], body["options"]
        if not isinstance(given, dict) or len(given) != 1 or not isinstance(options, dict):
            raise _Refusal(400, "BadRequest", "input must have one of prompt, messages, text; options an object")
        if model not in AI_MODELS:
            raise _Refusal(403, "ModelNotAllowed", f"the binding 'llm' does not allow the model {model!r}")
        if "text" in given:
            texts = given["text"] if isinstance(given["text"], list) else [given["text"]]
            return {"shape": [len(texts), 2], "data": [[len(text), 1.0] for text in texts], "usage": FAKE_USAGE}
        if "prompt" in given:
            return {"response": f"echo: {given['prompt']}", "usage": FAKE_USAGE}
        return {"response": f"echo: {given['messages'][-1]['content']}", "usage": FAKE_USAGE}

    def _exec(self, sql: str) -> dict[str, Any]:
        try:
            self.server.database.executescript(sql)
        except sqlite3.Error as error:
            raise _Refusal(400, "SqlError", str(error)) from None
        return {"count": sum(1 for statement in sql.split(";") if statement.strip()), "durationMs": 0.5}

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _FakeBrokerServer(http.server.HTTPServer):
    """One request at a time, like the calls of one program; one sqlite3 database per test."""

    def __init__(self, broker_token: str, execution: str) -> None:
        super().__init__(("127.0.0.1", 0), _FakeBrokerHandler)
        self.database = sqlite3.connect(":memory:", check_same_thread=False)
        self.broker = FakeBroker(f"http://127.0.0.1:{self.server_address[1]}", broker_token, execution, [])


@pytest.fixture
def fake_broker() -> Iterator[FakeBroker]:
    """A FakeBroker on 127.0.0.1 (see its docstring: a wire-format stand-in, not the real broker)."""
    server = _FakeBrokerServer("T" * 43, "team-a/ex-a")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.broker
    finally:
        server.shutdown()
        server.server_close()
        server.database.close()
        thread.join(5)
