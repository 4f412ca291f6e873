// JavaScript/TypeScript harness: runs the code as the body of an async function (input, console, require, process)
// with a global `api` (a small HTTP helper on fetch) and, when the Execution names bindings, the globals `bindings`,
// `db` (Cloudflare D1's shape) and `ai` (Workers AI's shape), through the bindings broker.
//
// Usage: node harness.mjs [--typescript] CODE_FILE [ARGS...]; the contract is sandbox_images/README.md.
// With --typescript the code is first transpiled by the `typescript` package installed next to this file.
// Started by a warm runner (CODEEXEC_REQUEST_FD set) it preloads, says so on the channel, and takes
// CODE_FILE, ARGS and the code's environment from its request.
import { closeSync, readFileSync, writeSync, existsSync } from "node:fs";
import Module, { createRequire } from "node:module";
import { resolve } from "node:path";
import { format, inspect } from "node:util";

const HARNESS_URL = import.meta.url;
const PARAMS = ["input", "console", "require", "process"];
// TypeScript diagnostics that only say the code is a function body (top-level return and await);
// the codes are stable across TypeScript releases.
const TS_BODY_DIAGNOSTICS = new Set([1108, 1375, 1378, 1431, 1432]);

class UserCodeError extends Error {}

// Returns send(jsonText): writes one line to the runner's channel; silent when there is none.
function channelWriter() {
  const fd = Number(process.env.CODEEXEC_CHANNEL_FD);
  let open = Number.isInteger(fd) && process.env.CODEEXEC_CHANNEL_FD !== "";
  return (jsonText) => {
    if (!open) return;
    try {
      writeSync(fd, jsonText + "\n");
    } catch {
      open = false; // the code closed or replaced fd 3: logs and result are its own business then
    }
  };
}

function structuredConsole(send) {
  // Inherits table/dir/time/... from Node's console; the five levels are also recorded.
  const out = Object.create(globalThis.console);
  const levels = { log: process.stdout, info: process.stdout, debug: process.stdout, warn: process.stderr, error: process.stderr };
  for (const [level, stream] of Object.entries(levels)) {
    out[level] = (...args) => {
      const message = format(...args);
      stream.write(message + "\n");
      send(JSON.stringify({ type: "log", level, time: new Date().toISOString(), message }));
    };
  }
  return out;
}

class HttpError extends Error {
  constructor(method, url, response, body) {
    super(`HTTP ${response.status} ${response.statusText}: ${method} ${url}`);
    this.name = "HttpError";
    this.status = response.status;
    this.body = body;
  }
}

// `api.request(method, url, { body, headers, timeoutMs })` on fetch: an object or array body is sent as JSON; the
// response comes back parsed when it is JSON, else as text; an HTTP error status throws HttpError (.status, .body).
async function httpRequest(method, url, { body, headers = {}, timeoutMs = 30000 } = {}) {
  const init = { method, headers: { accept: "application/json, text/plain;q=0.9, */*;q=0.8", ...headers } };
  if (body !== undefined && typeof body !== "string" && !(body instanceof Uint8Array)) {
    init.body = JSON.stringify(body);
    if (!Object.keys(headers).some((name) => name.toLowerCase() === "content-type")) {
      init.headers["content-type"] = "application/json";
    }
  } else if (body !== undefined) {
    init.body = body;
  }
  init.signal = AbortSignal.timeout(timeoutMs);
  let response;
  let text;
  try {
    response = await fetch(url, init);
    text = await response.text();
  } catch (error) {
    // fetch says only "fetch failed"; the cause says why (ECONNREFUSED, EAI_AGAIN, ...).
    throw new Error(`${method} ${url} failed: ${error.cause?.message ?? error.message}`, { cause: error });
  }
  const mime = (response.headers.get("content-type") ?? "").split(";")[0].trim().toLowerCase();
  const isJson = mime === "application/json" || mime.endsWith("+json");
  const parse = () => (text.trim() === "" ? null : JSON.parse(text));
  if (!response.ok) {
    let errorBody = text;
    try {
      if (isJson) errorBody = parse();
    } catch {} // an error page may lie about its type
    throw new HttpError(method, url, response, errorBody);
  }
  return isJson ? parse() : text;
}

// `api.get(url)`, `api.post(url, body)`, `api.request(...)` (httpRequest). Only the allowedDomains are reachable.
function httpApi() {
  return {
    request: httpRequest,
    get: (url, options) => httpRequest("GET", url, options),
    post: (url, body, options) => httpRequest("POST", url, { ...options, body }),
    HttpError,
  };
}

// A binding call that failed: .code is the broker's (Unauthorized, NotGranted, BadRequest, BackendUnavailable,
// TooManyCalls; db: SqlError, ReadOnly, LimitExceeded, StatementTimeout; ai: ModelNotAllowed, BudgetExceeded,
// UpstreamError, UpstreamTimeout), or BrokerUnreachable (no answer), BrokerError (an answer that was not the broker's),
// ColumnNotFound (first(column) of a row without it); .status is HTTP's, 0 without an answer.
class BindingError extends Error {
  constructor(code, status, message) {
    super(`${code}: ${message}`);
    this.name = "BindingError";
    this.code = code;
    this.status = status;
  }
}

// Returns call(path, body): one POST to the broker with the Execution's token, its answer or a BindingError.
function brokerCaller(url, token, execution) {
  const headers = { authorization: `Bearer ${token}`, "x-codeexec-execution": execution };
  return async (path, body) => {
    let answer;
    try {
      // The broker ends a call first: a statement within 60 s, a model request within 300 s (their longest limits).
      answer = await httpRequest("POST", url + path, { body, headers, timeoutMs: 360000 });
    } catch (error) {
      if (!(error instanceof HttpError)) {
        const code = error instanceof SyntaxError ? "BrokerError" : "BrokerUnreachable";
        throw new BindingError(code, 0, error.message);
      }
      const refusal = error.body?.error;
      if (typeof refusal?.code === "string") {
        throw new BindingError(refusal.code, error.status, String(refusal.message));
      }
      throw new BindingError("BrokerError", error.status, `HTTP ${error.status}: not an answer of the broker`);
    }
    if (typeof answer !== "object" || answer === null) {
      throw new BindingError("BrokerError", 200, "not an answer of the broker");
    }
    return answer;
  };
}

// D1's meta names for the broker's meta.
function d1Meta(meta) {
  return {
    duration: meta.durationMs,
    changes: meta.changes,
    last_row_id: meta.lastRowId,
    rows_read: meta.rowsRead,
    rows_written: meta.rowsWritten,
  };
}

// A D1 prepared statement: immutable; bind() returns a new one. Parameters are bound by the database, never
// interpolated: `?` (SQLite) or `$1` (PostgreSQL).
class PreparedStatement {
  #call;
  #sql;
  #params;

  constructor(call, sql, params) {
    this.#call = call;
    this.#sql = sql;
    this.#params = params;
  }

  bind(...values) {
    values.forEach((value, index) => {
      const ok = value === null || ["string", "boolean"].includes(typeof value) || Number.isFinite(value);
      // JSON would turn undefined and NaN into null without a word.
      if (!ok) {
        const what = `bind(): parameter ${index + 1} is ${inspect(value)}`;
        throw new TypeError(`${what}: only null, booleans, finite numbers and strings can be bound`);
      }
    });
    return new PreparedStatement(this.#call, this.#sql, values);
  }

  #query(mode) {
    return this.#call("/query", { sql: this.#sql, params: this.#params, mode });
  }

  async all() {
    const { results, meta } = await this.#query("all");
    return { results, success: true, meta: d1Meta(meta) };
  }

  async first(column) {
    const row = (await this.#query("first")).results[0] ?? null;
    if (column === undefined || row === null) return row;
    if (!Object.hasOwn(row, column)) {
      throw new BindingError("ColumnNotFound", 0, `no column ${inspect(column)} in the row`);
    }
    return row[column];
  }

  async run() {
    return { success: true, meta: d1Meta((await this.#query("run")).meta) };
  }

  // Rows as arrays of their values, in the columns' order (columns of the same name are one in the broker's rows).
  async raw() {
    return (await this.#query("all")).results.map((row) => Object.values(row));
  }
}

// A `db` binding (D1Database's shape): prepare(sql) -> a PreparedStatement; exec(sql) runs several statements
// without parameters -> { count, duration }.
class Database {
  #call;

  constructor(broker, name) {
    const path = `/v1/db/${encodeURIComponent(name)}`;
    this.#call = (action, body) => broker(path + action, body);
  }

  prepare(sql) {
    return new PreparedStatement(this.#call, sql, []);
  }

  async exec(sql) {
    const { count, durationMs } = await this.#call("/exec", { sql });
    return { count, duration: durationMs };
  }
}

// An `ai` binding (Workers AI's shape): run(model, input, options?) -> { response, usage } for input { prompt } or
// { messages: [{ role, content }] }, { shape, data, usage } for { text: string | string[] } (embeddings);
// chat(model, messages, options?) -> the reply's text (messages: an array of { role, content }, or one prompt string).
// options: { max_tokens, temperature }. The model is one the binding allows (else ModelNotAllowed).
class Ai {
  #call;

  constructor(broker, name) {
    const path = `/v1/ai/${encodeURIComponent(name)}/run`;
    this.#call = (body) => broker(path, body);
  }

  async run(model, input, options = {}) {
    return this.#call({ model, input, options });
  }

  async chat(model, messages, options = {}) {
    const input = typeof messages === "string" ? { prompt: messages } : { messages };
    return (await this.run(model, input, options)).response;
  }
}

// The client of each binding type; it is also the global of its type's name when the Execution names exactly one.
const CLIENTS = { db: Database, ai: Ai };

// The globals `bindings` (name -> client), `db` and `ai` (the only binding of that type) from what the runner
// announced (CODEEXEC_BINDINGS: name -> type); none exists when the Execution names no binding.
function installBindings() {
  const kinds = JSON.parse(process.env.CODEEXEC_BINDINGS || "{}");
  const names = Object.keys(kinds).filter((name) => Object.hasOwn(CLIENTS, kinds[name]));
  if (names.length === 0) return;
  const { CODEEXEC_BROKER_URL: url, CODEEXEC_BINDING_TOKEN: token, CODEEXEC_EXECUTION: execution } = process.env;
  const broker = brokerCaller(url.replace(/\/+$/, ""), token, execution);
  globalThis.bindings = Object.fromEntries(names.map((name) => [name, new CLIENTS[kinds[name]](broker, name)]));
  for (const kind of Object.keys(CLIENTS)) {
    const ofKind = names.filter((name) => kinds[name] === kind);
    // With several, `db` or `ai` would be a guess: the code picks from `bindings`.
    if (ofKind.length === 1) globalThis[kind] = globalThis.bindings[ofKind[0]];
  }
}

function quietFetchWarning() {
  // Node 18 warns on the first fetch() that the API is experimental: noise in the code's stderr.
  const emitWarning = process.emitWarning;
  process.emitWarning = function (warning, ...rest) {
    const type = typeof rest[0] === "string" ? rest[0] : rest[0]?.type;
    if (type === "ExperimentalWarning" && String(warning?.message ?? warning).includes("Fetch API")) return;
    return emitWarning.call(this, warning, ...rest);
  };
}

function readInput() {
  const path = process.env.CODEEXEC_INPUT_FILE;
  if (!path || !existsSync(path)) return null;
  const text = readFileSync(path, "utf8");
  return text.trim() === "" ? null : JSON.parse(text);
}

async function transpile(source, fileName) {
  const ts = (await import("typescript")).default;
  const output = ts.transpileModule(source, {
    fileName,
    reportDiagnostics: true,
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.CommonJS,
      esModuleInterop: true,
      inlineSourceMap: true,
    },
  });
  const errors = (output.diagnostics ?? []).filter((d) => !TS_BODY_DIAGNOSTICS.has(d.code));
  if (errors.length > 0) {
    const text = errors.map((d) => {
      const where = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : null;
      const prefix = where ? `${fileName}:${where.line + 1}:${where.character + 1} - ` : "";
      return `${prefix}error TS${d.code}: ${ts.flattenDiagnosticMessageText(d.messageText, "\n")}`;
    });
    throw new UserCodeError(text.join("\n"));
  }
  return output.outputText;
}

function compile(source, fileName) {
  // Compiled as a CommonJS module (Node's loader applies TypeScript's inline source map to stacks
  // and provides `exports` for TypeScript's output of import/export). The code starts on the
  // wrapper's first line, so line numbers in stacks match the file.
  const module = new Module(fileName);
  module.filename = fileName;
  module._compile(`module.exports = async function main(${PARAMS.join(", ")}) {${source}\n};`, fileName);
  return module.exports;
}

function describeError(error) {
  if (error instanceof UserCodeError) return error.message;
  if (!(error instanceof Error) || typeof error.stack !== "string") return `Uncaught ${inspect(error)}`;
  // Frames of the harness and of Node's module loader (which called it) are noise to the user.
  const noise = [HARNESS_URL, "node:internal/modules/"];
  return error.stack.split("\n").filter((line) => !noise.some((n) => line.includes(n))).join("\n");
}

async function main() {
  const argv = process.argv.slice(2);
  const typescript = argv[0] === "--typescript";
  if (typescript) argv.shift();
  if (argv.length < 1) {
    process.stderr.write("usage: node harness.mjs [--typescript] CODE_FILE [ARGS...]\n");
    return 2;
  }
  const fileName = resolve(argv[0]);
  // The code sees itself as the script and spec.args after it, as with `node main.js args`.
  process.argv = [process.argv[0], fileName, ...argv.slice(1)];
  const send = channelWriter();
  quietFetchWarning();
  // A global rather than a parameter: code that declares its own `api` keeps working.
  globalThis.api = httpApi();
  installBindings();

  let value;
  try {
    let source = readFileSync(fileName, "utf8");
    if (typescript) {
      process.setSourceMapsEnabled(true);
      source = await transpile(source, fileName);
    }
    const fn = compile(source, fileName);
    value = await fn(readInput(), structuredConsole(send), createRequire(fileName), process);
  } catch (error) {
    process.stderr.write(describeError(error) + "\n");
    return 1;
  }

  if (value === undefined) return 0;
  let json;
  try {
    json = JSON.stringify(value);
  } catch (error) {
    return reportFailure(send, `the returned value is not JSON-serialisable: ${error.message}`);
  }
  if (json === undefined) return reportFailure(send, `the returned value is not JSON-serialisable: a ${typeof value}`);
  send(`{"type":"result","value":${json}}`);
  return 0;
}

function reportFailure(send, message) {
  process.stderr.write(message + "\n");
  send(JSON.stringify({ type: "error", message }));
  return 1;
}

// Warm mode: preloads (TypeScript: the compiler imported and run once, so its code is compiled by V8
// already), says ready, then takes argv and env from the runner's request, leaving the code what a cold
// start gives it (no request fd, no extra variable).
async function awaitRequest(requestFd) {
  if (process.argv[2] === "--typescript") await transpile("export {};\n", "preload.ts");
  channelWriter()(JSON.stringify({ type: "ready" }));
  const request = JSON.parse(readFileSync(requestFd, "utf8")); // until the runner closes its end
  closeSync(requestFd);
  delete process.env.CODEEXEC_REQUEST_FD;
  Object.assign(process.env, request.env); // process.env writes through, so child processes inherit it
  process.argv.push(...request.argv);
}

// exitCode rather than exit(): pending timers and I/O the code started still finish, as in Node. An exit
// code the code set itself stands unless the harness failed.
if (process.env.CODEEXEC_REQUEST_FD) await awaitRequest(Number(process.env.CODEEXEC_REQUEST_FD));
const harnessExitCode = await main();
if (harnessExitCode !== 0 || process.exitCode === undefined) process.exitCode = harnessExitCode;
