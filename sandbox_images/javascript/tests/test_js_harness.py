"""Tests of the JavaScript harness, run through the real runner with the host's node."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

HARNESS = str(Path(__file__).resolve().parents[1] / "harness.mjs")

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed on this host")


def run_code(run_runner, code: str, *, args: tuple[str, ...] = (), **kwargs):
    return run_runner(["node", HARNESS, "main.js", *args], files={"main.js": code}, **kwargs)


def test_return_await_input_argv_and_require(run_runner):
    code = (
        "const fs = require('fs');\n"
        "const doubled = await new Promise((resolve) => setTimeout(() => resolve(input.n * 2), 10));\n"
        "return { doubled, argv: process.argv.slice(2), fs: typeof fs.readFileSync };\n"
    )
    r = run_code(run_runner, code, args=("a", "b"), input={"n": 21})
    assert r.report["exitCode"] == 0 and r.report["error"] is None
    assert r.report["hasResult"] is True
    assert r.report["result"] == {"doubled": 42, "argv": ["a", "b"], "fs": "function"}


def test_no_return_means_no_result(run_runner):
    r = run_code(run_runner, "const x = 1;\n")
    assert r.report["exitCode"] == 0 and r.report["hasResult"] is False and r.report["result"] is None


def test_return_null_is_a_result(run_runner):
    r = run_code(run_runner, "return null;\n")
    assert r.report["hasResult"] is True and r.report["result"] is None


def test_missing_input_is_null(run_runner):
    r = run_code(run_runner, "return input;\n")
    assert r.report["hasResult"] is True and r.report["result"] is None


def test_console_levels_streams_and_logs(run_runner):
    code = (
        "console.log('log', 1, [2]);\n"
        "console.info('info %d', 5);\n"
        "console.debug('debug');\n"
        "console.warn('warn');\n"
        "console.error('error', { k: 'v' });\n"
    )
    r = run_code(run_runner, code)
    assert r.report["stdout"]["text"] == "log 1 [ 2 ]\ninfo 5\ndebug\n"
    assert r.report["stderr"]["text"] == "warn\nerror { k: 'v' }\n"
    assert [(e["level"], e["message"]) for e in r.report["logs"]] == [
        ("log", "log 1 [ 2 ]"),
        ("info", "info 5"),
        ("debug", "debug"),
        ("warn", "warn"),
        ("error", "error { k: 'v' }"),
    ]
    assert all(e["time"].endswith("Z") and len(e["time"]) == 24 for e in r.report["logs"])


def test_timers_started_by_the_code_still_run(run_runner):
    r = run_code(run_runner, "setTimeout(() => console.log('later'), 20);\nreturn 1;\n")
    assert r.report["result"] == 1 and r.report["stdout"]["text"] == "later\n"


def test_thrown_error_exits_1_with_a_stack_of_the_user_code_only(run_runner):
    code = "function boom() {\n  throw new TypeError('bad value');\n}\nawait null;\nboom();\n"
    r = run_code(run_runner, code)
    assert r.returncode == 1 and r.report["exitCode"] == 1 and r.report["hasResult"] is False
    stderr = r.report["stderr"]["text"]
    assert stderr.startswith("TypeError: bad value\n")
    assert "main.js:2:9" in stderr and "main.js:5:1" in stderr
    assert "harness.mjs" not in stderr and "node:internal" not in stderr


def test_synchronous_throw_and_non_error_throw(run_runner):
    r = run_code(run_runner, "throw 'just a string';\n")
    assert r.report["exitCode"] == 1 and r.report["stderr"]["text"] == "Uncaught 'just a string'\n"


def test_syntax_error_exits_1(run_runner):
    r = run_code(run_runner, "let x = ;\n")
    assert r.report["exitCode"] == 1 and "SyntaxError" in r.report["stderr"]["text"]


def test_process_exit_code_is_kept(run_runner):
    r = run_code(run_runner, "console.log('bye');\nprocess.exit(3);\n")
    assert r.report["exitCode"] == 3 and r.report["stdout"]["text"] == "bye\n"


def test_process_exit_code_set_by_the_code_is_kept(run_runner):
    r = run_code(run_runner, "process.stdout.write('x\\n');\nprocess.exitCode = 3;\n")
    assert r.report["exitCode"] == 3 and r.report["stdout"]["text"] == "x\n"


@pytest.mark.parametrize("value", ["10n", "() => 1", "(() => { const a = {}; a.self = a; return a; })()"])
def test_non_serialisable_result_is_an_error(run_runner, value):
    r = run_code(run_runner, f"return {value};\n")
    assert r.report["exitCode"] == 1 and r.report["hasResult"] is False
    assert "not JSON-serialisable" in r.report["error"]
    assert "not JSON-serialisable" in r.report["stderr"]["text"]


def test_api_get_parses_json_and_returns_text_otherwise(run_runner, http_base):
    code = (
        "const base = input.base;\n"
        "return { json: await api.get(base + '/json'), text: await api.get(base + '/text'),\n"
        "         empty: await api.get(base + '/empty-json'), fetch: typeof fetch };\n"
    )
    r = run_code(run_runner, code, input={"base": http_base})
    assert r.report["exitCode"] == 0, r.report["stderr"]
    assert r.report["result"] == {
        "json": {"hello": "world", "n": [1, 2]},
        "text": "caf\u00e9",
        "empty": None,
        "fetch": "function",
    }
    assert r.report["stderr"]["text"] == ""  # no ExperimentalWarning about fetch (node 18)


def test_api_post_sends_json_text_and_custom_headers(run_runner, http_base):
    code = (
        "const base = input.base;\n"
        "return [await api.post(base + '/echo', { a: 1 }), await api.post(base + '/echo', 'raw text'),\n"
        "  await api.post(base + '/problem', 'x=1',\n"
        "    { headers: { 'Content-Type': 'application/x-www-form-urlencoded' } }),\n"
        "  await api.request('PUT', base + '/echo', { body: [1, 2] })];\n"
    )
    r = run_code(run_runner, code, input={"base": http_base})
    assert r.report["exitCode"] == 0, r.report["stderr"]
    assert r.report["result"] == [
        {"path": "/echo", "contentType": "application/json", "body": '{"a":1}'},
        {"path": "/echo", "contentType": "text/plain;charset=UTF-8", "body": "raw text"},
        {"path": "/problem", "contentType": "application/x-www-form-urlencoded", "body": "x=1"},
        {"path": "/echo", "contentType": "application/json", "body": "[1,2]"},
    ]


def test_api_http_errors_throw_with_status_and_body(run_runner, http_base):
    code = (
        "const errors = [];\n"
        "for (const path of ['/missing', '/broken']) {\n"
        "  try { await api.get(input.base + path); }\n"
        "  catch (error) { errors.push([error instanceof api.HttpError, error.status, error.body, error.message]); }\n"
        "}\n"
        "return errors;\n"
    )
    r = run_code(run_runner, code, input={"base": http_base})
    assert r.report["exitCode"] == 0, r.report["stderr"]
    assert r.report["result"] == [
        [True, 404, {"error": "no such thing"}, f"HTTP 404 Not Found: GET {http_base}/missing"],
        [True, 500, "it broke", f"HTTP 500 Internal Server Error: GET {http_base}/broken"],
    ]


def test_api_connection_refused_fails_fast_and_says_why(run_runner):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        r = run_code(run_runner, f"await api.get('http://127.0.0.1:{port}/');\n")
    assert r.report["exitCode"] == 1
    assert f"GET http://127.0.0.1:{port}/ failed: connect ECONNREFUSED" in r.report["stderr"]["text"]
    assert r.elapsed < 5


def test_code_may_declare_its_own_api(run_runner):
    r = run_code(run_runner, "const api = 'mine';\nreturn api;\n")
    assert r.report["exitCode"] == 0 and r.report["result"] == "mine"


def test_db_d1_calls_send_the_broker_wire_format_and_return_d1_shapes(run_runner, fake_broker):
    """The `db` client against the FakeBroker (a wire-format stand-in; the real broker is the e2e tests' job)."""
    code = (
        "const created = await db.exec(input.schema);\n"
        "const insert = db.prepare('INSERT INTO t (name) VALUES (?)');\n"
        'const run = await insert.bind("b\'); DROP TABLE t; --").run();\n'
        "const select = db.prepare('SELECT id, name FROM t WHERE id >= ? ORDER BY id');\n"
        "const fromTwo = select.bind(2);\n"
        "return { created, run, all: await select.bind(1).all(), fromTwo: await fromTwo.all(),\n"
        "  unbound: await db.prepare('SELECT count(*) AS n FROM t').first(),\n"
        "  first: await select.bind(1).first(), name: await fromTwo.first('name'),\n"
        "  none: await select.bind(9).first(),\n"
        "  noneColumn: await select.bind(9).first('name'), raw: await select.bind(1).raw(),\n"
        "  same: bindings.notes === db, rebound: fromTwo.bind(1) !== fromTwo };\n"
    )
    schema = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t (name) VALUES ('a')"
    r = run_code(run_runner, code, bindings=fake_broker.bindings_file({"notes": "db"}), input={"schema": schema})
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    injected = "b'); DROP TABLE t; --"
    meta = {"duration": 0.5, "changes": 0, "last_row_id": 2, "rows_read": 2, "rows_written": 0}
    assert r.report["result"] == {
        "created": {"count": 2, "duration": 0.5},
        "run": {"success": True, "meta": {**meta, "changes": 1, "rows_read": 0, "rows_written": 1}},
        "all": {"results": [{"id": 1, "name": "a"}, {"id": 2, "name": injected}], "success": True, "meta": meta},
        "fromTwo": {"results": [{"id": 2, "name": injected}], "success": True, "meta": {**meta, "rows_read": 1}},
        "unbound": {"n": 2},
        "first": {"id": 1, "name": "a"},
        "name": injected,
        "none": None,
        "noneColumn": None,
        "raw": [[1, "a"], [2, injected]],
        "same": True,
        "rebound": True,
    }
    select = "SELECT id, name FROM t WHERE id >= ? ORDER BY id"
    assert [(request["path"], request["body"]) for request in fake_broker.requests] == [
        ("/v1/db/notes/exec", {"sql": schema}),
        ("/v1/db/notes/query", {"sql": "INSERT INTO t (name) VALUES (?)", "params": [injected], "mode": "run"}),
        ("/v1/db/notes/query", {"sql": select, "params": [1], "mode": "all"}),
        ("/v1/db/notes/query", {"sql": select, "params": [2], "mode": "all"}),
        ("/v1/db/notes/query", {"sql": "SELECT count(*) AS n FROM t", "params": [], "mode": "first"}),
        ("/v1/db/notes/query", {"sql": select, "params": [1], "mode": "first"}),
        ("/v1/db/notes/query", {"sql": select, "params": [2], "mode": "first"}),  # bind(1) left fromTwo alone
        ("/v1/db/notes/query", {"sql": select, "params": [9], "mode": "first"}),
        ("/v1/db/notes/query", {"sql": select, "params": [9], "mode": "first"}),
        ("/v1/db/notes/query", {"sql": select, "params": [1], "mode": "all"}),
    ]
    for request in fake_broker.requests:
        assert request["headers"]["authorization"] == f"Bearer {fake_broker.token}"
        assert request["headers"]["x-codeexec-execution"] == "team-a/ex-a"
        assert request["headers"]["content-type"] == "application/json"


def test_db_errors_reject_with_the_brokers_code_and_status(run_runner, fake_broker):
    code = (
        "const attempt = (promise) => promise.then(\n"
        "  () => 'resolved', (e) => [e instanceof Error, e.name, e.code, e.status, e.message]);\n"
        "const { notes, other } = bindings;\n"
        "return [await attempt(notes.prepare('SELEKT 1').all()), await attempt(other.exec('SELECT 1')),\n"
        "  await attempt(notes.prepare('SELECT 1 AS one').first('two')), typeof db, Object.keys(bindings)];\n"
    )
    r = run_code(run_runner, code, bindings=fake_broker.bindings_file({"notes": "db", "other": "db"}))
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    sql_error, not_granted, no_column, db_type, names = r.report["result"]
    assert sql_error == [True, "BindingError", "SqlError", 400, 'SqlError: near "SELEKT": syntax error']
    assert not_granted[:4] == [True, "BindingError", "NotGranted", 403] and "'other'" in not_granted[4]
    assert no_column == [True, "BindingError", "ColumnNotFound", 0, "ColumnNotFound: no column 'two' in the row"]
    assert (db_type, names) == ("undefined", ["notes", "other"])  # two db bindings: no `db`


def test_db_refused_token_is_unauthorized_and_uncaught_rejections_end_the_code(run_runner, fake_broker):
    bindings_file = {**fake_broker.bindings_file({"notes": "db"}), "token": "stolen"}
    r = run_code(run_runner, "await db.prepare('SELECT 1').all();\n", bindings=bindings_file)
    assert r.report["exitCode"] == 1
    assert r.report["stderr"]["text"].startswith("BindingError: Unauthorized: not authorized\n")
    assert fake_broker.requests[0]["headers"]["authorization"] == "Bearer stolen"


def test_db_broker_unreachable_rejects_with_status_0(run_runner, fake_broker):
    import socket

    code = "return await db.exec('SELECT 1').catch((e) => [e.code, e.status, e.message]);\n"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        r = run_code(run_runner, code, bindings={**fake_broker.bindings_file({"notes": "db"}), "url": url})
    error_code, status, message = r.report["result"]
    assert (error_code, status) == ("BrokerUnreachable", 0) and "ECONNREFUSED" in message


@pytest.mark.parametrize("value", ["undefined", "NaN", "10n", "{}", "[1]"])
def test_db_bind_refuses_what_json_would_change(run_runner, fake_broker, value):
    code = f"try {{ db.prepare('SELECT ?').bind('ok', {value}); }} catch (e) {{ return [e.name, e.message]; }}\n"
    r = run_code(run_runner, code, bindings=fake_broker.bindings_file({"notes": "db"}))
    name, message = r.report["result"]
    assert name == "TypeError" and message.startswith("bind(): parameter 2 is ") and "can be bound" in message
    assert fake_broker.requests == []


def test_without_bindings_db_ai_and_bindings_are_absent(run_runner):
    r = run_code(run_runner, "return [typeof db, typeof ai, typeof bindings, 'bindings' in globalThis];\n")
    assert r.report["result"] == ["undefined", "undefined", "undefined", False]


def test_ai_calls_send_the_broker_wire_format_and_return_workers_ai_answers(run_runner, fake_broker):
    """The `ai` client against the FakeBroker (a wire-format stand-in that echoes: no model)."""
    code = (
        "const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }];\n"
        "return {\n"
        "  run: await ai.run('tiny-chat', { prompt: 'Say hi' }, { max_tokens: 20, temperature: 0 }),\n"
        "  chat: await ai.chat('tiny-chat', messages), prompt: await ai.chat('tiny-chat', 'Hello'),\n"
        "  embed: await ai.run('tiny-embed', { text: ['a', 'bcd'] }),\n"
        "  same: bindings.llm === ai, db: bindings.notes === db,\n"
        "};\n"
    )
    r = run_code(run_runner, code, bindings=fake_broker.bindings_file({"notes": "db", "llm": "ai"}))
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert r.report["result"] == {
        "run": {"response": "echo: Say hi", "usage": usage},
        "chat": "echo: Hi",
        "prompt": "echo: Hello",
        "embed": {"shape": [2, 2], "data": [[1, 1], [3, 1]], "usage": usage},
        "same": True,
        "db": True,  # one binding of each type: both globals
    }
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert [(request["path"], request["body"]) for request in fake_broker.requests] == [
        (
            "/v1/ai/llm/run",
            {"model": "tiny-chat", "input": {"prompt": "Say hi"}, "options": {"max_tokens": 20, "temperature": 0}},
        ),
        ("/v1/ai/llm/run", {"model": "tiny-chat", "input": {"messages": messages}, "options": {}}),
        ("/v1/ai/llm/run", {"model": "tiny-chat", "input": {"prompt": "Hello"}, "options": {}}),
        ("/v1/ai/llm/run", {"model": "tiny-embed", "input": {"text": ["a", "bcd"]}, "options": {}}),
    ]
    for request in fake_broker.requests:
        assert request["headers"]["authorization"] == f"Bearer {fake_broker.token}"
        assert request["headers"]["x-codeexec-execution"] == "team-a/ex-a"


def test_ai_errors_reject_with_the_brokers_code_and_status(run_runner, fake_broker):
    code = (
        "const attempt = (promise) => promise.then(\n"
        "  () => 'resolved', (e) => [e instanceof Error, e.name, e.code, e.status, e.message]);\n"
        "const { llm, other } = bindings;\n"
        "return [await attempt(llm.run('gpt-4o', { prompt: 'x' })), await attempt(other.chat('m', 'x')),\n"
        "  typeof ai, Object.keys(bindings)];\n"
    )
    r = run_code(run_runner, code, bindings=fake_broker.bindings_file({"llm": "ai", "other": "ai"}))
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    not_allowed, not_granted, ai_type, names = r.report["result"]
    assert not_allowed == [
        True,
        "BindingError",
        "ModelNotAllowed",
        403,
        "ModelNotAllowed: the binding 'llm' does not allow the model 'gpt-4o'",
    ]
    assert not_granted[:4] == [True, "BindingError", "NotGranted", 403]
    assert (ai_type, names) == ("undefined", ["llm", "other"])  # two ai bindings: no `ai`


def test_warm_hello(start_warm, warm_request):
    """Warm mode: node pre-started with the harness loaded; the same parameters and result as cold."""
    warm = start_warm(["node", HARNESS])
    warm.wait_ready()
    code = "console.info('hi', input.name);\nreturn { argv: process.argv.slice(2), file: __filename };\n"
    r = warm.finish(warm_request(code, file_name="main.js", input={"name": "warm"}, args=["x"]))
    assert r.returncode == 0 and r.report["error"] is None, r.report["stderr"]["text"]
    assert r.after_acknowledgement().startswith(b"hi warm\n")
    assert r.report["result"] == {"argv": ["x"], "file": str(warm.warm_dir / "main.js")}


# Open descriptors by kind (pipe, eventfd, a path...): node opens its own, so numbers vary, kinds must not.
FD_KINDS = (
    "const fs = require('fs');\n"
    "const kinds = fs.readdirSync('/proc/self/fd').map((fd) => {\n"
    "  try { return fs.readlinkSync(`/proc/self/fd/${fd}`).replace(/:\\[\\d+\\]$/, ''); } catch { return 'gone'; }\n"
    "});\n"
    "return { kinds: kinds.sort(), env: Object.keys(process.env).sort(), stdin: fs.readFileSync(0, 'utf8') };\n"
)


def test_warm_leaves_no_descriptor_or_variable_of_the_waiting_phase(start_warm, run_runner, warm_request):
    """Seen failing (one more pipe, CODEEXEC_REQUEST_FD in env) when the harness kept its request fd and variable."""
    cold = run_code(run_runner, FD_KINDS, stdin=b"in", input=None)  # as the operator: always an input file
    warm = start_warm(["node", HARNESS])
    warm.wait_ready()
    r = warm.finish(warm_request(FD_KINDS, file_name="main.js", stdin="in"))
    expected = cold.report["result"]
    # fd 0 is the stdin file in both; only its directory differs.
    expected["kinds"] = sorted(str(warm.warm_dir / "stdin") if k.endswith("/stdin") else k for k in expected["kinds"])
    assert r.report["result"] == expected
