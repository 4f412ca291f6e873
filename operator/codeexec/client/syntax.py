"""The syntax check of POST /validate: a small checker program per language that runs as an Execution of the
caller's (so in a sandbox, never in the gateway's process) and returns the parser's diagnostics as its result."""

from __future__ import annotations

from typing import Any

from codeexec.client.shapes import ExecuteRequest, FieldError

# Checker Executions are deleted once read (KubeTransport.validate): they are no history anyone asked for.
# No ttlSecondsAfterFinished: an Execution deleted while its TTL runs keeps its finalizer (seen with the
# operator of 2026-12-02: deleted within the TTL, it stayed Terminating), so the gateway deletes it itself.
CHECK_TIMEOUT_SECONDS = 30
CHECK_LABEL = "codeexec.io/purpose"

# Each checker gets the code as its `input` and returns [{line, column, message}] (1-based; empty: no error).
# Python: ast.parse, which accepts what the harness runs (top-level return and await are the compiler's
# business, and the harness rewrites them before compiling).
PYTHON = """
import ast
try:
    ast.parse(input, "main.py")
except SyntaxError as error:
    return [{"line": error.lineno, "column": error.offset, "message": error.msg}]
return []
"""
# JavaScript: V8 compiles the code as the harness runs it, the body of an async function, without running it.
JAVASCRIPT = """
const vm = require("node:vm");
try {
  new vm.Script("(async function () {\\n" + input + "\\n})", { filename: "main.js" });
  return [];
} catch (error) {
  const at = /main\\.js:(\\d+)/.exec(error.stack || "");
  return [{ line: at ? Number(at[1]) - 1 : null, column: null, message: error.message }];
}
"""
# TypeScript: the compiler's full diagnostics (syntax and types) for the code wrapped as the harness runs it,
# against ES2022 and declarations of what the harness provides; the harness itself only transpiles, so type
# errors would not stop the code, but they are what a TypeScript user asks a check for.
TYPESCRIPT = """
const ts = require("/opt/codeexec/node_modules/typescript");
const globals = `declare const input: any;
declare const api: { get(url: string): Promise<any>; post(url: string, body?: any): Promise<any> };
declare const console: { [level in "log" | "info" | "warn" | "error" | "debug"]: (...args: any[]) => void };
declare function require(name: string): any;
declare const process: any;`;
const files = { "main.ts": "(async function () {\\n" + input + "\\n})", "globals.d.ts": globals };
const options = { target: ts.ScriptTarget.ES2022, lib: ["lib.es2022.d.ts"], noEmit: true, types: [] };
const host = ts.createCompilerHost(options);
const read = host.getSourceFile;
const exists = host.fileExists;
host.getSourceFile = (name, version) =>
  name in files ? ts.createSourceFile(name, files[name], version) : read(name, version);
host.fileExists = (name) => name in files || exists(name);
const program = ts.createProgram(Object.keys(files), options, host);
return ts
  .getPreEmitDiagnostics(program)
  .filter((d) => d.file && d.file.fileName === "main.ts")
  .map((d) => {
    const at = d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : null;
    return {
      line: at ? at.line : null,
      column: at ? at.character + 1 : null,
      message: ts.flattenDiagnosticMessageText(d.messageText, "\\n"),
    };
  });
"""
CHECKERS = {"python": PYTHON, "javascript": JAVASCRIPT, "typescript": TYPESCRIPT}


def checker(request: ExecuteRequest, runtime: str) -> ExecuteRequest | None:
    """The Execution that checks `request.code` with the parser of `runtime` (a Runtime's name); None for a
    language without a checker."""
    program = CHECKERS.get(runtime)
    if program is None:
        return None
    return ExecuteRequest(
        code=program,
        language=runtime,
        input=request.code,
        timeout_seconds=CHECK_TIMEOUT_SECONDS,
        labels={CHECK_LABEL: "syntax-check"},
    )


def diagnostics(result: Any) -> list[FieldError]:
    """The checker's result as errors of the request's `code` field."""
    if not isinstance(result, list):
        return [FieldError(field="code", message=f"the syntax check returned no diagnostics: {result!r}"[:500])]
    return [
        FieldError(
            field="code",
            message=str(item.get("message", "")),
            line=item.get("line"),
            column=item.get("column"),
        )
        for item in result
        if isinstance(item, dict)
    ]
