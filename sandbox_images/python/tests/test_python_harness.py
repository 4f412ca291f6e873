"""Tests of the Python harness, run through the real runner with the host's python3."""

from __future__ import annotations

from pathlib import Path

HARNESS = str(Path(__file__).resolve().parents[1] / "harness.py")


def run_code(run_runner, code: str, *, args: tuple[str, ...] = (), **kwargs):
    return run_runner(["python3", HARNESS, "main.py", *args], files={"main.py": code}, **kwargs)


def test_top_level_return_await_input_and_argv(run_runner):
    code = (
        "import asyncio, sys\n"
        "value = await asyncio.sleep(0.01, result=input['n'] * 2)\n"
        "if value:\n"
        "    return {'value': value, 'argv': sys.argv[1:], 'name': __name__}\n"
        "print('not reached')\n"
    )
    r = run_code(run_runner, code, args=("a", "b"), input={"n": 21})
    assert r.report["exitCode"] == 0 and r.report["error"] is None
    assert r.report["hasResult"] is True
    assert r.report["result"] == {"value": 42, "argv": ["a", "b"], "name": "__main__"}
    assert r.report["stdout"]["text"] == ""


def test_return_without_await_and_inside_loops(run_runner):
    r = run_code(run_runner, "for i in range(10):\n    if i == 3:\n        return i\n")
    assert r.report["hasResult"] is True and r.report["result"] == 3


def test_no_return_means_no_result(run_runner):
    r = run_code(run_runner, "x = 1\n")
    assert r.report["exitCode"] == 0 and r.report["hasResult"] is False and r.report["result"] is None


def test_bare_return_ends_without_result_but_return_none_is_null(run_runner):
    r = run_code(run_runner, "print('a')\nreturn\nprint('b')\n")
    assert r.report["hasResult"] is False and r.report["stdout"]["text"] == "a\n"
    r = run_code(run_runner, "return None\n")
    assert r.report["hasResult"] is True and r.report["result"] is None


def test_returns_inside_functions_and_classes_are_untouched(run_runner):
    code = (
        "def f():\n    return 1\n"
        "async def g():\n    return 2\n"
        "class C:\n    def m(self):\n        return 3\n"
        "h = lambda: 4\n"
        "return [f(), await g(), C().m(), h()]\n"
    )
    r = run_code(run_runner, code)
    assert r.report["result"] == [1, 2, 3, 4]


def test_return_is_not_caught_by_except_exception(run_runner):
    r = run_code(run_runner, "try:\n    return 'kept'\nexcept Exception:\n    return 'caught'\n")
    assert r.report["result"] == "kept"


def test_missing_input_is_none(run_runner):
    r = run_code(run_runner, "return input\n")
    assert r.report["hasResult"] is True and r.report["result"] is None


def test_console_levels_streams_and_logs(run_runner):
    code = (
        "console.log('log', 1, [2])\n"
        "console.info('info')\n"
        "console.debug('debug')\n"
        "console.warn('warn')\n"
        "console.error('error', {'k': 'v'})\n"
    )
    r = run_code(run_runner, code)
    assert r.report["stdout"]["text"] == "log 1 [2]\ninfo\ndebug\n"
    assert r.report["stderr"]["text"] == "warn\nerror {'k': 'v'}\n"
    logs = r.report["logs"]
    assert [(e["level"], e["message"]) for e in logs] == [
        ("log", "log 1 [2]"),
        ("info", "info"),
        ("debug", "debug"),
        ("warn", "warn"),
        ("error", "error {'k': 'v'}"),
    ]
    assert all(e["time"].endswith("Z") and len(e["time"]) == 24 for e in logs)


def test_exception_exits_1_with_a_traceback_of_the_user_code_only(run_runner):
    code = "import asyncio\ndef boom():\n    raise ValueError('bad value')\nawait asyncio.sleep(0)\nboom()\n"
    r = run_code(run_runner, code)
    assert r.returncode == 1 and r.report["exitCode"] == 1 and r.report["hasResult"] is False
    stderr = r.report["stderr"]["text"]
    assert stderr.startswith("Traceback (most recent call last):\n")
    assert 'main.py", line 5, in <module>' in stderr and 'main.py", line 3, in boom' in stderr
    assert stderr.endswith("ValueError: bad value\n")
    assert "harness.py" not in stderr and "asyncio" not in stderr


def test_syntax_error_exits_1(run_runner):
    r = run_code(run_runner, "x = (\n")
    assert r.report["exitCode"] == 1
    assert "SyntaxError" in r.report["stderr"]["text"] and "harness.py" not in r.report["stderr"]["text"]


def test_sys_exit_code_is_kept(run_runner):
    r = run_code(run_runner, "import sys\nprint('bye')\nsys.exit(3)\n")
    assert r.report["exitCode"] == 3 and r.report["stdout"]["text"] == "bye\n"


def test_non_serialisable_result_is_an_error(run_runner):
    r = run_code(run_runner, "return {'s': {1, 2}}\n")
    assert r.report["exitCode"] == 1 and r.report["hasResult"] is False
    assert "not JSON-serialisable" in r.report["error"]
    assert "not JSON-serialisable" in r.report["stderr"]["text"]
    r = run_code(run_runner, "return float('nan')\n")
    assert r.report["exitCode"] == 1 and "not JSON-serialisable" in r.report["error"]


def test_api_get_parses_json_and_returns_text_otherwise(run_runner, http_base):
    code = (
        "base = input['base']\n"
        "return {'json': api.get(base + '/json'), 'text': api.get(base + '/text'),\n"
        "        'empty': api.get(base + '/empty-json')}\n"
    )
    r = run_code(run_runner, code, input={"base": http_base})
    assert r.report["exitCode"] == 0, r.report["stderr"]
    assert r.report["result"] == {"json": {"hello": "world", "n": [1, 2]}, "text": "caf\u00e9", "empty": None}


def test_api_post_sends_json_text_and_custom_headers(run_runner, http_base):
    code = (
        "base = input['base']\n"
        "return [api.post(base + '/echo', {'a': 1}), api.post(base + '/echo', 'raw text'),\n"
        "        api.post(base + '/problem', 'x=1', headers={'Content-Type': 'application/x-www-form-urlencoded'}),\n"
        "        api.request('PUT', base + '/echo', [1, 2])]\n"
    )
    r = run_code(run_runner, code, input={"base": http_base})
    assert r.report["exitCode"] == 0, r.report["stderr"]
    assert r.report["result"] == [
        {"path": "/echo", "contentType": "application/json", "body": '{"a": 1}'},
        {"path": "/echo", "contentType": "text/plain; charset=utf-8", "body": "raw text"},
        {"path": "/problem", "contentType": "application/x-www-form-urlencoded", "body": "x=1"},
        {"path": "/echo", "contentType": "application/json", "body": "[1, 2]"},
    ]


def test_api_http_errors_raise_with_status_and_body(run_runner, http_base):
    code = (
        "errors = []\n"
        "for path in ('/missing', '/broken'):\n"
        "    try:\n"
        "        api.get(input['base'] + path)\n"
        "    except api.HTTPError as error:\n"
        "        errors.append([error.status, error.body, str(error)])\n"
        "return errors\n"
    )
    r = run_code(run_runner, code, input={"base": http_base})
    assert r.report["exitCode"] == 0, r.report["stderr"]
    assert r.report["result"] == [
        [404, {"error": "no such thing"}, f"HTTP 404 Not Found: GET {http_base}/missing"],
        [500, "it broke", f"HTTP 500 Internal Server Error: GET {http_base}/broken"],
    ]


def test_api_connection_refused_fails_fast(run_runner):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        r = run_code(run_runner, f"api.get('http://127.0.0.1:{port}/')\n")
    assert r.report["exitCode"] == 1 and "Connection refused" in r.report["stderr"]["text"]
    assert r.elapsed < 5


def test_code_may_define_its_own_api(run_runner):
    r = run_code(run_runner, "api = 'mine'\nreturn api\n")
    assert r.report["result"] == "mine"


def test_db_calls_send_the_broker_wire_format_and_return_rows_meta_and_counts(run_runner, fake_broker):
    """The `db` client against the FakeBroker (a wire-format stand-in; the real broker is the e2e tests' job)."""
    code = (
        "count = db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t (name) VALUES (\\'a\\')')\n"
        "meta = db.run('INSERT INTO t (name) VALUES (?)', ['b\\'); DROP TABLE t; --'])\n"
        "return {'count': count, 'meta': meta, 'rows': db.execute('SELECT id, name FROM t ORDER BY id'),\n"
        "        'query': db.query('SELECT name FROM t WHERE id > ?', (1,)),\n"
        "        'first': db.first('SELECT id, name FROM t ORDER BY id'),\n"
        "        'none': db.first('SELECT * FROM t WHERE id = ?', [9]),\n"
        "        'same': bindings['notes'] is db, 'error': db.Error is BindingError, 'repr': repr(db)}\n"
    )
    r = run_code(run_runner, code, bindings=fake_broker.bindings_file({"notes": "db"}))
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    injected = "b'); DROP TABLE t; --"
    assert r.report["result"] == {
        "count": 2,
        "meta": {"changes": 1, "lastRowId": 2, "rowsRead": 0, "rowsWritten": 1, "durationMs": 0.5},
        "rows": [{"id": 1, "name": "a"}, {"id": 2, "name": injected}],
        "query": [{"name": injected}],
        "first": {"id": 1, "name": "a"},
        "none": None,
        "same": True,
        "error": True,
        "repr": "<db binding 'notes'>",
    }
    assert [(request["path"], request["body"]) for request in fake_broker.requests] == [
        (
            "/v1/db/notes/exec",
            {"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t (name) VALUES ('a')"},
        ),
        ("/v1/db/notes/query", {"sql": "INSERT INTO t (name) VALUES (?)", "params": [injected], "mode": "run"}),
        ("/v1/db/notes/query", {"sql": "SELECT id, name FROM t ORDER BY id", "params": [], "mode": "all"}),
        ("/v1/db/notes/query", {"sql": "SELECT name FROM t WHERE id > ?", "params": [1], "mode": "all"}),
        ("/v1/db/notes/query", {"sql": "SELECT id, name FROM t ORDER BY id", "params": [], "mode": "first"}),
        ("/v1/db/notes/query", {"sql": "SELECT * FROM t WHERE id = ?", "params": [9], "mode": "first"}),
    ]
    for request in fake_broker.requests:
        assert request["headers"]["authorization"] == f"Bearer {fake_broker.token}"
        assert request["headers"]["x-codeexec-execution"] == "team-a/ex-a"
        assert request["headers"]["content-type"] == "application/json"


def test_db_errors_raise_one_class_with_the_brokers_code_and_status(run_runner, fake_broker):
    code = (
        "def attempt(call):\n"
        "    try:\n"
        "        call()\n"
        "    except BindingError as error:\n"
        "        return [error.code, error.status, error.message, str(error)]\n"
        "notes, other = bindings['notes'], bindings['other']\n"
        "return [attempt(lambda: notes.execute('SELEKT 1')), attempt(lambda: other.exec('SELECT 1')),\n"
        "        'db' in globals(), sorted(bindings), notes.Error is BindingError]\n"
    )
    bindings_file = fake_broker.bindings_file({"notes": "db", "other": "db"})
    r = run_code(run_runner, code, bindings=bindings_file)
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    sql_error, not_granted, has_db, names, one_class = r.report["result"]
    assert sql_error == ["SqlError", 400, 'near "SELEKT": syntax error', 'SqlError: near "SELEKT": syntax error']
    assert not_granted[:2] == ["NotGranted", 403] and "'other'" in not_granted[2]
    assert (has_db, names, one_class) == (False, ["notes", "other"], True)  # two db bindings: no `db`


def test_db_refused_token_is_unauthorized_and_uncaught_errors_end_the_code(run_runner, fake_broker):
    bindings_file = {**fake_broker.bindings_file({"notes": "db"}), "token": "stolen"}
    r = run_code(run_runner, "db.execute('SELECT 1')\n", bindings=bindings_file)
    assert r.report["exitCode"] == 1
    assert r.report["stderr"]["text"].endswith("BindingError: Unauthorized: not authorized\n")
    assert fake_broker.requests[0]["headers"]["authorization"] == "Bearer stolen"


def test_db_broker_unreachable_is_a_binding_error_with_status_0(run_runner, fake_broker):
    import socket

    code = "try:\n    db.first('SELECT 1')\nexcept db.Error as e:\n    return [e.code, e.status, e.message]\n"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        r = run_code(run_runner, code, bindings={**fake_broker.bindings_file({"notes": "db"}), "url": url})
    error_code, status, message = r.report["result"]
    assert (
        (error_code, status) == ("BrokerUnreachable", 0) and message.startswith(url) and "Connection refused" in message
    )


def test_db_calls_ignore_proxies_that_spec_env_names(run_runner, fake_broker):
    """The token goes to the broker only, never to a proxy (whose address the code's spec.env could set)."""
    proxy = "http://127.0.0.1:9"  # nothing listens there: a call through it would fail
    r = run_code(
        run_runner,
        "return db.first('SELECT 1 AS one')\n",
        bindings=fake_broker.bindings_file({"notes": "db"}),
        env={"http_proxy": proxy, "HTTP_PROXY": proxy, "all_proxy": proxy},
    )
    assert r.report["result"] == {"one": 1}, r.report["stderr"]["text"]


def test_db_params_must_be_a_list_or_tuple(run_runner, fake_broker):
    code = "try:\n    db.execute('SELECT :a', {'a': 1})\nexcept TypeError as error:\n    return str(error)\n"
    r = run_code(run_runner, code, bindings=fake_broker.bindings_file({"notes": "db"}))
    assert r.report["result"] == "params must be a list or tuple, not dict"
    assert fake_broker.requests == []


def test_without_bindings_db_and_ai_are_undefined_and_bindings_empty(run_runner):
    r = run_code(run_runner, "return [bindings, 'db' in globals(), 'ai' in globals()]\n")
    assert r.report["result"] == [{}, False, False]


def test_ai_calls_send_the_broker_wire_format_and_return_workers_ai_answers(run_runner, fake_broker):
    """The `ai` client against the FakeBroker (a wire-format stand-in that echoes: no model; the real broker is
    tested in tests/unit/test_broker_ai.py and the e2e tests)."""
    code = (
        "messages = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]\n"
        "return {'run': ai.run('tiny-chat', {'prompt': 'Say hi'}, max_tokens=20, temperature=0),\n"
        "        'chat': ai.chat('tiny-chat', messages), 'prompt': ai.chat('tiny-chat', 'Hello'),\n"
        "        'embed': ai.run('tiny-embed', {'text': ['a', 'bcd']}),\n"
        "        'same': bindings['llm'] is ai, 'db': db is bindings['notes'], 'error': ai.Error is BindingError,\n"
        "        'repr': repr(ai)}\n"
    )
    r = run_code(run_runner, code, bindings=fake_broker.bindings_file({"notes": "db", "llm": "ai"}))
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert r.report["result"] == {
        "run": {"response": "echo: Say hi", "usage": usage},
        "chat": "echo: Hi",
        "prompt": "echo: Hello",
        "embed": {"shape": [2, 2], "data": [[1, 1.0], [3, 1.0]], "usage": usage},
        "same": True,
        "db": True,  # one binding of each type: both globals
        "error": True,
        "repr": "<ai binding 'llm'>",
    }
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert [(request["path"], request["body"]) for request in fake_broker.requests] == [
        (
            "/v1/ai/llm/run",
            {
                "model": "tiny-chat",
                "input": {"prompt": "Say hi"},
                "options": {"max_tokens": 20, "temperature": 0},
            },
        ),
        ("/v1/ai/llm/run", {"model": "tiny-chat", "input": {"messages": messages}, "options": {}}),
        ("/v1/ai/llm/run", {"model": "tiny-chat", "input": {"prompt": "Hello"}, "options": {}}),
        ("/v1/ai/llm/run", {"model": "tiny-embed", "input": {"text": ["a", "bcd"]}, "options": {}}),
    ]
    for request in fake_broker.requests:
        assert request["headers"]["authorization"] == f"Bearer {fake_broker.token}"
        assert request["headers"]["x-codeexec-execution"] == "team-a/ex-a"


def test_ai_errors_raise_the_binding_error_with_the_brokers_code(run_runner, fake_broker):
    code = (
        "def attempt(call):\n"
        "    try:\n"
        "        call()\n"
        "    except BindingError as error:\n"
        "        return [error.code, error.status, str(error)]\n"
        "llm, other = bindings['llm'], bindings['other']\n"
        "return [attempt(lambda: llm.run('gpt-4o', {'prompt': 'x'})), attempt(lambda: other.chat('m', 'x')),\n"
        "        'ai' in globals(), sorted(bindings)]\n"
    )
    r = run_code(run_runner, code, bindings=fake_broker.bindings_file({"llm": "ai", "other": "ai"}))
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    not_allowed, not_granted, has_ai, names = r.report["result"]
    assert not_allowed == [
        "ModelNotAllowed",
        403,
        "ModelNotAllowed: the binding 'llm' does not allow the model 'gpt-4o'",
    ]
    assert not_granted[:2] == ["NotGranted", 403]
    assert (has_ai, names) == (False, ["llm", "other"])  # two ai bindings: no `ai`


def test_warm_hello(start_warm, warm_request):
    """Warm mode: pre-started, ready before the request, then the same globals and result as cold."""
    warm = start_warm(["python3", HARNESS])
    warm.wait_ready()
    code = "import sys\nconsole.info('hi', input['name'])\nreturn {'argv': sys.argv[1:], 'name': __name__}\n"
    r = warm.finish(warm_request(code, input={"name": "warm"}, args=["x"]))
    assert r.returncode == 0 and r.report["error"] is None, r.report["stderr"]["text"]
    assert r.after_acknowledgement().startswith(b"hi warm\n")
    assert r.report["result"] == {"argv": ["x"], "name": "__main__"}
    assert [(e["level"], e["message"]) for e in r.report["logs"]] == [("info", "hi warm")]


def test_warm_traceback_shows_only_the_user_code(start_warm, warm_request):
    """The waiting phase adds no frames of its own to a traceback."""
    warm = start_warm(["python3", HARNESS])
    warm.wait_ready()
    r = warm.finish(warm_request("def f():\n    raise ValueError('bad')\nf()\n"))
    assert r.returncode == 1
    stderr = r.report["stderr"]["text"]
    assert stderr.startswith("Traceback (most recent call last):\n") and "harness.py" not in stderr
    assert stderr.endswith("ValueError: bad\n") and stderr.count('main.py", line') == 2
