"""Python harness: runs /code/main.py as `__main__` with `input`, `console`, `api`, `bindings` (and `db`, `ai`),
top-level return and await.

Usage: python3 harness.py CODE_FILE [ARGS...]; the contract is sandbox_images/README.md. Started by a warm
runner (CODEEXEC_REQUEST_FD set) it preloads, says so on the channel, and takes CODE_FILE, ARGS and the
code's environment from its request.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import sys
import threading
import traceback
import types
from datetime import UTC, datetime
from typing import Any

RETURN_NAME = "__codeexec_return__"


class CodeReturn(BaseException):
    """Raised by a top-level `return`; a BaseException so user `except Exception` does not catch it."""

    def __init__(self, has_value: bool, value: Any = None) -> None:
        super().__init__()
        self.has_value = has_value
        self.value = value


class TopLevelReturn(ast.NodeTransformer):
    """Turns module-level `return X` into `raise __codeexec_return__(True, X)`."""

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        return node  # a return inside a function belongs to that function

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef
    visit_ClassDef = visit_FunctionDef  # a return there stays the SyntaxError Python reports

    def visit_Return(self, node: ast.Return) -> ast.AST:
        # A bare `return` ends the code without a result (like JavaScript's `return;`).
        args: list[ast.expr] = [ast.Constant(False)] if node.value is None else [ast.Constant(True), node.value]
        call = ast.Call(func=ast.Name(RETURN_NAME, ast.Load()), args=args, keywords=[])
        return ast.copy_location(ast.Raise(exc=call, cause=None), node)


class Channel:
    """Writes JSON lines to the runner's channel fd; silent when there is none (or the code closed it)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.lock = threading.Lock()  # lines above PIPE_BUF could interleave across threads

    def send(self, message: dict[str, Any]) -> None:
        if self.fd is None:
            return
        data = (json.dumps(message, allow_nan=False) + "\n").encode("ascii")
        with self.lock:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError:
                self.fd = None


class Console:
    """`console.log/info/debug` print to stdout, `warn/error` to stderr, all become structured logs."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def _emit(self, level: str, stream: Any, args: tuple[Any, ...]) -> None:
        message = " ".join(str(a) for a in args)
        print(message, file=stream, flush=True)
        now = datetime.now(UTC)
        when = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        self._channel.send({"type": "log", "level": level, "time": when, "message": message})

    def log(self, *args: Any) -> None:
        self._emit("log", sys.stdout, args)

    def info(self, *args: Any) -> None:
        self._emit("info", sys.stdout, args)

    def debug(self, *args: Any) -> None:
        self._emit("debug", sys.stdout, args)

    def warn(self, *args: Any) -> None:
        self._emit("warn", sys.stderr, args)

    def error(self, *args: Any) -> None:
        self._emit("error", sys.stderr, args)


class HTTPError(Exception):
    """An HTTP response with status >= 400 from `api`: `status`, `reason` and the decoded `body`."""

    def __init__(self, method: str, url: str, status: int, reason: str, body: Any) -> None:
        super().__init__(f"HTTP {status} {reason}: {method} {url}")
        self.status = status
        self.reason = reason
        self.body = body


class Api:
    """`api.get(url)`, `api.post(url, body)`, `api.request(method, url, body)`: HTTP(S) with urllib. A dict
    or list body is sent as JSON; the response comes back parsed when it is JSON, else as text; an HTTP
    error status raises `api.HTTPError`. Only the Execution's allowedDomains are reachable."""

    HTTPError = HTTPError

    def request(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Any:
        all_headers = {"Accept": "application/json, text/plain;q=0.9, */*;q=0.8", **(headers or {})}
        data = None
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data, content_type = bytes(body), "application/octet-stream"
            elif isinstance(body, str):
                data, content_type = body.encode(), "text/plain; charset=utf-8"
            else:
                data, content_type = json.dumps(body).encode(), "application/json"
            if not any(name.lower() == "content-type" for name in all_headers):
                all_headers["Content-Type"] = content_type
        status, reason, response_headers, raw = _exchange(method.upper(), url, data, all_headers, timeout)
        if status >= 400:
            body = _decode(response_headers, raw, lenient=True)  # an error page may lie about its type
            raise HTTPError(method.upper(), url, status, reason, body)
        return _decode(response_headers, raw)

    def get(self, url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> Any:
        return self.request("GET", url, headers=headers, timeout=timeout)

    def post(self, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 30) -> Any:
        return self.request("POST", url, body, headers, timeout)


def _exchange(
    method: str, url: str, data: bytes | None, headers: dict[str, str], timeout: float, proxies: bool = True
) -> tuple[int, str, Any, bytes]:
    """One HTTP exchange with urllib: (status, reason, headers, body); an HTTP error status is returned, not raised.
    Without `proxies` the *_proxy variables (which spec.env may set) are ignored."""
    import urllib.error  # imported on first use: most code never needs them
    import urllib.request

    opener = urllib.request.build_opener() if proxies else urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.reason, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.reason, error.headers, error.read()


def _decode(headers: Any, raw: bytes, lenient: bool = False) -> Any:
    """A response body: parsed when its Content-Type is JSON, else text (also when lenient and not JSON)."""
    mime = headers.get_content_type() if headers else "text/plain"
    try:
        text = raw.decode((headers.get_content_charset() if headers else None) or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        text = raw.decode("utf-8", "replace")
    if mime == "application/json" or mime.endswith("+json"):
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            if not lenient:
                raise
    return text


class BindingError(Exception):
    """A binding call that failed: `code` (the broker's: Unauthorized, NotGranted, BadRequest, BackendUnavailable,
    TooManyCalls; db: SqlError, ReadOnly, LimitExceeded, StatementTimeout; ai: ModelNotAllowed, BudgetExceeded,
    UpstreamError, UpstreamTimeout; BrokerUnreachable when no answer came, BrokerError when the answer was not the
    broker's), `status` (HTTP, 0 without an answer) and `message`."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message


class Broker:
    """Calls the bindings broker for this Execution (CODEEXEC_BROKER_URL, with its token): JSON in, JSON out."""

    # The broker ends a call first: a statement within 60 s, a model request within 300 s (their longest limits).
    TIMEOUT_SECONDS = 360

    def __init__(self, url: str, token: str, execution: str) -> None:
        self.url = url.rstrip("/")
        self.headers = {
            "Authorization": f"Bearer {token}",
            "X-Codeexec-Execution": execution,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body, allow_nan=False).encode()
        try:
            # Never through a proxy spec.env names: the token goes to the broker only.
            status, reason, _, raw = _exchange("POST", self.url + path, data, self.headers, self.TIMEOUT_SECONDS, False)
        except OSError as error:  # URLError, timeouts: the broker was not reached
            raise BindingError("BrokerUnreachable", 0, f"{self.url}: {getattr(error, 'reason', error)}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if status == 200 and isinstance(answer, dict):
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            raise BindingError(error["code"], status, str(error.get("message", "")))
        raise BindingError("BrokerError", status, f"HTTP {status} {reason}: not an answer of the broker")


class Database:
    """A `db` binding: `execute(sql, params=())` (also `query`) -> rows as dicts, `first(...)` -> a row or None,
    `run(...)` -> meta {changes, lastRowId, rowsRead, rowsWritten, durationMs}, `exec(sql)` -> statements run (several,
    no params). Params are bound by the database, never interpolated: `?` (SQLite) or `$1` (PostgreSQL)."""

    Error = BindingError

    def __init__(self, broker: Broker, name: str) -> None:
        self._broker = broker
        self._path = f"/v1/db/{name}"
        self.name = name

    def __repr__(self) -> str:
        return f"<db binding {self.name!r}>"

    def _query(self, sql: str, params: list[Any] | tuple[Any, ...], mode: str) -> dict[str, Any]:
        if not isinstance(params, (list, tuple)):
            raise TypeError(f"params must be a list or tuple, not {type(params).__name__}")
        return self._broker.call(self._path + "/query", {"sql": sql, "params": list(params), "mode": mode})

    def execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = self._query(sql, params, "all")["results"]
        return results

    query = execute

    def first(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> dict[str, Any] | None:
        results = self._query(sql, params, "first")["results"]
        return results[0] if results else None

    def run(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> dict[str, Any]:
        meta: dict[str, Any] = self._query(sql, params, "run")["meta"]
        return meta

    def exec(self, sql: str) -> int:
        count: int = self._broker.call(self._path + "/exec", {"sql": sql})["count"]
        return count


class Ai:
    """An `ai` binding (Workers AI's shape): `run(model, input, **options)` -> {"response", "usage"} for
    input {"prompt": str} or {"messages": [{"role", "content"}, ...]}, {"shape", "data", "usage"} for
    {"text": str or [str, ...]} (embeddings); `chat(model, messages, **options)` -> the reply's text (messages: a
    list of {"role", "content"}, or one prompt string). options: max_tokens, temperature. The model is one the
    binding allows (else ModelNotAllowed)."""

    Error = BindingError

    def __init__(self, broker: Broker, name: str) -> None:
        self._broker = broker
        self._path = f"/v1/ai/{name}/run"
        self.name = name

    def __repr__(self) -> str:
        return f"<ai binding {self.name!r}>"

    def run(self, model: str, input: dict[str, Any], **options: Any) -> dict[str, Any]:
        return self._broker.call(self._path, {"model": model, "input": input, "options": options})

    def chat(self, model: str, messages: str | list[dict[str, str]], **options: Any) -> str:
        given = {"prompt": messages} if isinstance(messages, str) else {"messages": list(messages)}
        response: str = self.run(model, given, **options)["response"]
        return response


# The client of each binding type, and the global it is when the Execution names exactly one of that type.
CLIENTS: dict[str, type[Database] | type[Ai]] = {"db": Database, "ai": Ai}


def read_bindings() -> dict[str, Database | Ai]:
    """The clients of the bindings the runner announced (CODEEXEC_BINDINGS: name -> type); {} without any."""
    kinds = json.loads(os.environ.get("CODEEXEC_BINDINGS") or "{}")
    if not kinds:
        return {}
    broker = Broker(
        os.environ["CODEEXEC_BROKER_URL"], os.environ["CODEEXEC_BINDING_TOKEN"], os.environ["CODEEXEC_EXECUTION"]
    )
    return {name: CLIENTS[kind](broker, name) for name, kind in kinds.items() if kind in CLIENTS}


def channel_fd() -> int | None:
    value = os.environ.get("CODEEXEC_CHANNEL_FD")
    return int(value) if value else None


def read_input() -> Any:
    path = os.environ.get("CODEEXEC_INPUT_FILE")
    if not path or not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return json.loads(f.read() or b"null")


def print_user_traceback(exc: BaseException, code_path: str) -> None:
    # Frames before the first one in the user's file are the harness and asyncio: noise to the user.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != code_path:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)


def run_code(code_path: str, module: types.ModuleType) -> CodeReturn | None:
    with open(code_path, "rb") as f:
        source = f.read()
    tree = TopLevelReturn().visit(ast.parse(source, code_path))
    ast.fix_missing_locations(tree)
    code = compile(tree, code_path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    try:
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(code, module.__dict__))
        else:
            exec(code, module.__dict__)
    except CodeReturn as returned:
        return returned
    return None


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: harness.py CODE_FILE [ARGS...]", file=sys.stderr)
        return 2
    code_path = os.path.abspath(sys.argv[1])
    sys.argv = sys.argv[1:]  # the code sees itself as the script, spec.args as sys.argv[1:]
    sys.path[0] = os.path.dirname(code_path)
    channel = Channel(channel_fd())

    module = types.ModuleType("__main__")
    module.__file__ = code_path
    bindings = read_bindings()
    module.__dict__.update(
        {
            "input": read_input(),
            "console": Console(channel),
            "api": Api(),
            "bindings": bindings,
            "BindingError": BindingError,
            RETURN_NAME: CodeReturn,
        }
    )
    for kind, client in CLIENTS.items():
        of_kind = [binding for binding in bindings.values() if isinstance(binding, client)]
        if len(of_kind) == 1:  # with several, `db` or `ai` would be a guess: the code picks from `bindings`
            module.__dict__[kind] = of_kind[0]
    sys.modules["__main__"] = module  # pickle, dataclasses and `if __name__ == "__main__"` work

    try:
        returned = run_code(code_path, module)
    except SystemExit:
        raise  # sys.exit() in the code sets the exit code, as in plain Python
    except BaseException as exc:  # any failure of the user's code, reported like Python does
        print_user_traceback(exc, code_path)
        return 1
    if returned is not None and returned.has_value:
        try:
            channel.send({"type": "result", "value": returned.value})
        except (TypeError, ValueError, RecursionError) as exc:
            message = f"the returned value is not JSON-serialisable: {exc}"
            print(message, file=sys.stderr)
            channel.send({"type": "error", "message": message})
            return 1
    return 0


def await_request(request_fd: int) -> None:
    """Warm mode: everything is imported; says ready, then takes argv and env from the runner's request, leaving
    the code what a cold start gives it (no request fd, no extra variable)."""
    Channel(channel_fd()).send({"type": "ready"})
    with open(request_fd, "rb") as f:  # until the runner closes its end
        request = json.loads(f.read())
    del os.environ["CODEEXEC_REQUEST_FD"]
    os.environ.update(request["env"])  # os.environ writes through, so child processes inherit it
    sys.argv = [sys.argv[0], *request["argv"]]


if __name__ == "__main__":
    if "CODEEXEC_REQUEST_FD" in os.environ:
        await_request(int(os.environ["CODEEXEC_REQUEST_FD"]))
    sys.exit(main())
