"""The `codeexec` command: run code and read Executions through the SDK; `codeexec gateway` serves the HTTP API,
`codeexec broker` the bindings broker.
(The operator itself is `python -m codeexec run`, see __main__.py.)"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from codeexec.client import Client, CodeExecError, ExecutionResult, Language
from codeexec.client.shapes import ExecutionList
from codeexec.vocabulary import Phase

# Exit codes besides the program's own: the request failed (the API's error on stderr), the program timed out
# (as timeout(1)), or it ended without an exit code of its own (OOM kill, eviction, ...).
EXIT_REQUEST_FAILED = 2
EXIT_TIMED_OUT = 124
EXIT_NO_EXIT_CODE = 1
SERVICE_ACCOUNT_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "gateway":
        _serve(args)
        return
    if args.command == "broker":
        from codeexec.broker.server import serve

        serve()
        return
    try:
        with _client(args) as client:
            code = args.handler(client, args)
    except CodeExecError as error:
        detail = f" (execution {error.execution_id})" if error.execution_id else ""
        print(f"codeexec: {error.reason}: {error.message}{detail}", file=sys.stderr)
        for field in getattr(error, "errors", []):
            if field.field and field.message not in error.message:
                print(f"  {field.field}: {field.message}", file=sys.stderr)
        code = EXIT_REQUEST_FAILED
    raise SystemExit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codeexec", description="Run code in code-exec sandboxes.")
    # The options every client command takes, after its name (codeexec ls -n NAMESPACE -o json).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="default: the kubeconfig context's, or the token's")
    common.add_argument("--gateway", metavar="URL", help="use the HTTP gateway instead of the Kubernetes API")
    common.add_argument("--token-file", type=Path, help="a Kubernetes bearer token for --gateway")
    common.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config, else in-cluster")
    common.add_argument("--context", help="kubeconfig context")
    common.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=[common])

    run = command("run", "run a file (- for stdin); exits with the program's exit code")
    _code_arguments(run)
    run.add_argument("--input", type=json.loads, help="JSON value handed to the code as `input`")
    run.add_argument("--stdin", type=Path, metavar="FILE", help="file fed to the program's standard input")
    run.add_argument("--timeout", type=int, metavar="SECONDS", dest="timeout_seconds")
    run.add_argument("--allow-domain", action="append", default=[], metavar="HOST[:PORT]", dest="allowed_domains")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--arg", action="append", default=[], dest="args", help="an argument of the program")
    run.add_argument("--name", help="the Execution's name (default: generated)")
    run.add_argument("--no-wait", action="store_true", help="print the Execution's id and return at once")
    run.add_argument("--wait-seconds", type=float, default=300.0, help="give up waiting after this long")
    run.set_defaults(handler=_run)

    validate = command("validate", "check a file without running it")
    _code_arguments(validate)
    validate.set_defaults(handler=_validate)

    get = command("get", "one Execution")
    get.add_argument("id")
    get.set_defaults(handler=_get)

    ls = command("ls", "Executions, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--language")
    ls.add_argument("--phase", choices=[phase.value for phase in Phase])
    ls.add_argument("-l", "--selector", dest="label_selector", help="label selector")
    ls.set_defaults(handler=_ls)

    delete = command("delete", "delete an Execution")
    delete.add_argument("id")
    delete.set_defaults(handler=_delete)

    languages = command("languages", "the installed languages")
    languages.set_defaults(handler=_languages)

    commands.add_parser(
        "broker", help="serve the bindings broker (in a pod: the chart runs it; settings: CODEEXEC_BROKER_* variables)"
    )
    gateway = commands.add_parser("gateway", help="serve the HTTP gateway (in a pod: the chart runs it)")
    gateway.add_argument("--host", default="0.0.0.0")
    gateway.add_argument("--port", type=int, default=8080)
    gateway.add_argument("--server", help="API server URL (default: in-cluster, from KUBERNETES_SERVICE_HOST)")
    gateway.add_argument("--certificate-authority", default=SERVICE_ACCOUNT_CA, help="CA bundle of the API server")
    gateway.add_argument("--max-body-bytes", type=int, default=1024 * 1024)
    gateway.add_argument("--max-header-bytes", type=int, default=16 * 1024)
    gateway.add_argument("--max-wait-seconds", type=int, default=300)
    gateway.add_argument("--max-waits-per-caller", type=int, default=16)
    gateway.add_argument(
        "--max-queued-per-namespace",
        type=int,
        default=0,
        help="POST /execute answers 429 while the namespace has this many waiting Executions (0: no limit)",
    )
    gateway.add_argument(
        "--readiness-token-file",
        help="the pod's own token, read on each /health/ready to check the CRDs and the operator (without: skipped)",
    )
    gateway.add_argument(
        "--operator-deployment", help="the operator's Deployment, for /health/ready (without: skipped)"
    )
    gateway.add_argument("--operator-namespace", default="default", help="the operator Deployment's namespace")
    return parser


def _code_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="source file, or - for standard input")
    parser.add_argument("-l", "--language", help="default: from the file's extension (the Runtimes' file names)")


def _client(args: argparse.Namespace) -> Client:
    if args.gateway:
        if not args.token_file:
            raise SystemExit("codeexec: --gateway needs --token-file (kubectl create token NAME > FILE)")
        token = args.token_file.read_text().strip()
        return Client(gateway_url=args.gateway, token=token, namespace=args.namespace)
    return Client(namespace=args.namespace, kubeconfig=args.kubeconfig, context=args.context)


def _source(client: Client, args: argparse.Namespace) -> tuple[str, str]:
    """The code and its language (--language, else the Runtime whose file name has the file's extension)."""
    code = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    if args.language:
        return code, str(args.language)
    suffix = Path(args.file).suffix
    for language in client.get_supported_languages():
        if suffix and language.file_name.endswith(suffix):
            return code, language.name
    raise SystemExit(f"codeexec: cannot tell the language of {args.file!r}: use --language")


def _run(client: Client, args: argparse.Namespace) -> int:
    code, language = _source(client, args)
    config: dict[str, Any] = {
        "timeout_seconds": args.timeout_seconds,
        "allowed_domains": args.allowed_domains,
        "env": dict(item.split("=", 1) for item in args.env),
        "args": args.args,
        "name": args.name,
        "stdin": args.stdin.read_text() if args.stdin else None,
    }
    wait = not args.no_wait
    progress = _progress if wait and sys.stderr.isatty() and args.output == "text" else None
    result = client.execute_code(
        code, language, args.input, config, wait=wait, wait_seconds=args.wait_seconds, on_update=progress
    )
    if progress is not None:
        print("\r\033[K", end="", file=sys.stderr)  # clears the progress line before the program's output
    if not wait:
        _print(args.output, result, lambda out: print(result.id, file=out))
        return 0
    if args.output != "text":
        _print(args.output, result, lambda out: None)
    else:
        sys.stdout.write(result.stdout or "")
        sys.stderr.write(result.stderr or "")
        if result.stdout_truncated or result.stderr_truncated:
            print(f"codeexec: output truncated (execution {result.id})", file=sys.stderr)
        if not result.succeeded and result.reason:
            print(f"codeexec: {result.phase}: {result.reason}: {result.message}", file=sys.stderr)
    return exit_code(result)


def _progress(result: ExecutionResult) -> None:
    """One line on the terminal, rewritten while the Execution is queued, starting or running."""
    where = f" (queue position {result.queue_position})" if result.queue_position else ""
    state = f"{result.phase or 'Pending'}{' ' + result.reason if result.reason else ''}{where}"
    print(f"\r\033[Kcodeexec: {result.id} {state}", end="", file=sys.stderr, flush=True)


def exit_code(result: ExecutionResult) -> int:
    """The program's exit code; 124 when it timed out; 1 when it ended without one of its own."""
    if result.phase == Phase.TIMED_OUT:
        return EXIT_TIMED_OUT
    if result.exit_code is not None:
        return result.exit_code
    return 0 if result.succeeded else EXIT_NO_EXIT_CODE


def _validate(client: Client, args: argparse.Namespace) -> int:
    code, language = _source(client, args)
    result = client.validate_code(code, language)

    def text(out: TextIO) -> None:
        print("valid" if result.valid else "invalid", file=out)
        for error in result.errors:
            print(f"  {error.field or '(request)'}: {error.message}", file=out)

    _print(args.output, result, text)
    return 0 if result.valid else 1


def _get(client: Client, args: argparse.Namespace) -> int:
    result = client.get_execution(args.id)
    _print(args.output, result, lambda out: _table([result], out))
    return 0


def _ls(client: Client, args: argparse.Namespace) -> int:
    filters = {"language": args.language, "phase": args.phase, "label_selector": args.label_selector}
    listing: ExecutionList = client.list_executions(args.limit, args.offset, **filters)
    _print(args.output, listing, lambda out: _table(listing.items, out))
    return 0


def _delete(client: Client, args: argparse.Namespace) -> int:
    client.delete_execution(args.id)
    print(f"deleted {args.id}")
    return 0


def _languages(client: Client, args: argparse.Namespace) -> int:
    found = client.get_supported_languages()

    def text(out: TextIO) -> None:
        rows = [["NAME", "VERSION", "ALIASES", "TIMEOUT", "MAX TIMEOUT"]]
        rows += [[lang.name, lang.version, ",".join(lang.aliases), *_timeouts(lang)] for lang in found]
        _columns(rows, out)

    _print(args.output, found, text)
    return 0


def _timeouts(language: Language) -> list[str]:
    return [str(language.default_timeout_seconds), str(language.max_timeout_seconds or "")]


def _table(results: list[ExecutionResult], out: TextIO) -> None:
    rows = [["ID", "LANGUAGE", "PHASE", "REASON", "EXIT", "DURATION(MS)", "CPU(MS)", "PEAK MEMORY", "CREATED"]]
    for r in results:
        rows.append([r.id, r.language, r.phase or "", r.reason or "", *map(_blank, (r.exit_code, r.duration_ms))])
        usage = r.usage
        rows[-1] += [_blank(usage.cpu_ms), _mebibytes(usage.peak_memory_bytes)] if usage else ["", ""]
        rows[-1].append(r.created_at or "")
    _columns(rows, out)


def _mebibytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f}Mi"


def _blank(value: int | None) -> str:
    return "" if value is None else str(value)


def _columns(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def _print(output: str, value: Any, text: Any) -> None:
    if output == "text":
        text(sys.stdout)
        return
    if isinstance(value, list):
        data = [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in value]
    else:
        data = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if output == "json":
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from codeexec.client.kubeapi import Connection
    from codeexec.gateway.app import Settings, create_app
    from codeexec.gateway.readiness import ReadinessConfig

    if args.server:
        server = Connection(args.server, ssl.create_default_context(cafile=args.certificate_authority))
    else:
        server = Connection.in_cluster(args.certificate_authority)
    settings = Settings(
        args.max_body_bytes,
        args.max_wait_seconds,
        args.max_waits_per_caller,
        args.max_queued_per_namespace,
        ReadinessConfig(args.readiness_token_file, args.operator_deployment, args.operator_namespace),
    )
    uvicorn.run(
        create_app(server, settings),
        host=args.host,
        port=args.port,
        http="h11",
        h11_max_incomplete_event_size=args.max_header_bytes,
        # Longer than clients keep idle connections (aiohttp: 15 s), so a client never sends on a connection
        # the gateway is closing (uvicorn's 5 s default: "Server disconnected" now and then).
        timeout_keep_alive=75,
        log_level="info",
        access_log=False,
    )
