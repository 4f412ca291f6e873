"""Tests of the TypeScript mode of the JS harness, with the image's pinned typescript installed by npm."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SANDBOX_IMAGES = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ts_harness(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image's layout in a temp dir: harness.mjs next to node_modules/typescript from the lock file."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to install the pinned typescript package")
    root = tmp_path_factory.mktemp("typescript-harness")
    for name in ("package.json", "package-lock.json"):
        shutil.copy(SANDBOX_IMAGES / "typescript" / name, root / name)
    npm = subprocess.run(
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if npm.returncode != 0:
        pytest.skip(f"npm ci of the pinned typescript failed (registry unreachable?): {npm.stderr[-500:]}")
    shutil.copy(SANDBOX_IMAGES / "javascript" / "harness.mjs", root / "harness.mjs")
    return str(root / "harness.mjs")


def run_code(run_runner, ts_harness: str, code: str, **kwargs):
    return run_runner(["node", ts_harness, "--typescript", "main.ts"], files={"main.ts": code}, **kwargs)


def test_types_are_stripped_and_return_await_input_work(run_runner, ts_harness):
    code = (
        "interface Point { x: number; y: number }\n"
        "enum Color { Red, Green }\n"
        "const p: Point = { x: input.x, y: 2 };\n"
        "const n: number = await Promise.resolve(3);\n"
        "console.info('point', p);\n"
        "return { sum: p.x + p.y + n, color: Color.Green };\n"
    )
    r = run_code(run_runner, ts_harness, code, input={"x": 1})
    assert r.report["exitCode"] == 0 and r.report["error"] is None, r.report["stderr"]["text"]
    assert r.report["result"] == {"sum": 6, "color": 1}
    assert r.report["logs"][0]["level"] == "info" and r.report["logs"][0]["message"] == "point { x: 1, y: 2 }"


def test_import_statements_use_require(run_runner, ts_harness):
    code = "import * as os from 'os';\nimport fs from 'fs';\nreturn [typeof os.platform, typeof fs.readFileSync];\n"
    r = run_code(run_runner, ts_harness, code)
    assert r.report["result"] == ["function", "function"], r.report["stderr"]["text"]


def test_type_errors_do_not_stop_the_code(run_runner, ts_harness):
    r = run_code(run_runner, ts_harness, "const x: string = 5;\nreturn x;\n")
    assert r.report["exitCode"] == 0 and r.report["result"] == 5


def test_error_stack_points_at_the_typescript_source(run_runner, ts_harness):
    # Type-only lines vanish in the JavaScript output: the positions come from the source map.
    code = (
        "type T = { a: number };\n"
        "\n"
        "interface U { b: string }\n"
        "function boom(): never {\n"
        "  throw new Error('bad');\n"
        "}\n"
        "boom();\n"
    )
    r = run_code(run_runner, ts_harness, code)
    assert r.report["exitCode"] == 1
    stderr = r.report["stderr"]["text"]
    assert stderr.startswith("Error: bad\n") and "main.ts:5:9" in stderr and "main.ts:7:1" in stderr


def test_syntax_error_exits_1_with_typescript_diagnostics(run_runner, ts_harness):
    r = run_code(run_runner, ts_harness, "const x: number = ;\n")
    assert r.report["exitCode"] == 1
    assert "main.ts:1:19 - error TS1109: Expression expected." in r.report["stderr"]["text"]


def test_api_helper_is_available(run_runner, ts_harness, http_base):
    code = (
        "interface Greeting { hello: string }\n"
        "const greeting: Greeting = await api.get(input.base + '/json');\n"
        "return greeting.hello;\n"
    )
    r = run_code(run_runner, ts_harness, code, input={"base": http_base})
    assert r.report["exitCode"] == 0 and r.report["result"] == "world", r.report["stderr"]["text"]


def test_db_binding_is_available_in_typescript(run_runner, ts_harness, fake_broker):
    """D1-style typed code (type arguments included) runs unchanged: TypeScript is transpiled, not type-checked, so
    the globals need no declarations. Against the FakeBroker (a wire-format stand-in, not the broker)."""
    code = (
        "interface Row { id: number; name: string }\n"
        "await db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)');\n"
        "await db.prepare('INSERT INTO t (name) VALUES (?)').bind('ts').run();\n"
        "const row = await db.prepare('SELECT id, name FROM t WHERE id = ?').bind(1).first<Row>();\n"
        "const { results } = await bindings.notes.prepare('SELECT name FROM t').all<Pick<Row, 'name'>>();\n"
        "return [row, results];\n"
    )
    r = run_code(run_runner, ts_harness, code, bindings=fake_broker.bindings_file({"notes": "db"}))
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    assert r.report["result"] == [{"id": 1, "name": "ts"}, [{"name": "ts"}]]
    assert len(fake_broker.requests) == 4


def test_ai_binding_is_available_in_typescript(run_runner, ts_harness, fake_broker):
    """Workers-AI-style typed code runs without declarations, against the FakeBroker (an echo, not a model)."""
    code = (
        "type Message = { role: 'system' | 'user' | 'assistant'; content: string };\n"
        "const messages: Message[] = [{ role: 'user', content: 'Hi' }];\n"
        "const reply: string = await ai.chat('tiny-chat', messages);\n"
        "const { shape }: { shape: number[] } = await ai.run('tiny-embed', { text: 'abc' });\n"
        "return [reply, shape];\n"
    )
    r = run_code(run_runner, ts_harness, code, bindings=fake_broker.bindings_file({"llm": "ai"}))
    assert r.report["exitCode"] == 0, r.report["stderr"]["text"]
    assert r.report["result"] == ["echo: Hi", [1, 2]]


def test_warm_hello(start_warm, warm_request, ts_harness):
    """Warm mode: the compiler is imported before the request; types stripped, return and input as cold."""
    warm = start_warm(["node", ts_harness, "--typescript"])
    warm.wait_ready()
    code = "interface P { x: number }\nconst p: P = { x: input.x };\nconsole.log('hi');\nreturn p.x + 1;\n"
    r = warm.finish(warm_request(code, file_name="main.ts", input={"x": 41}))
    assert r.returncode == 0 and r.report["error"] is None, r.report["stderr"]["text"]
    assert r.after_acknowledgement().startswith(b"hi\n") and r.report["result"] == 42


def test_warm_preload_takes_the_compiler_off_the_request_path(start_warm, warm_request, run_runner, ts_harness):
    """Request → report for the same code, warm (compiler imported and run once while waiting) and cold, three
    runs each; prints the figures (pytest -s). Seen failing (warm median 1124 ms, cold 1339 ms on the dev
    host) with the preload removed."""
    code = "interface P { x: number }\nconst p: P = { x: 1 };\nreturn p.x + 1;\n"
    warm_ms, cold_ms = [], []
    for _ in range(3):
        warm = start_warm(["node", ts_harness, "--typescript"])
        warm.wait_ready()
        r = warm.finish(warm_request(code, file_name="main.ts"))
        assert r.report["result"] == 2
        warm_ms.append(r.elapsed * 1000)
        cold = run_code(run_runner, ts_harness, code)
        assert cold.report["result"] == 2
        cold_ms.append(cold.elapsed * 1000)
    warm_median, cold_median = sorted(warm_ms)[1], sorted(cold_ms)[1]
    runs = {"warm": [round(ms) for ms in sorted(warm_ms)], "cold": [round(ms) for ms in sorted(cold_ms)]}
    print(f"\nTypeScript request -> report, ms (three runs each, sorted): {runs}")
    assert warm_median * 4 < cold_median
