"""The HTTP gateway (FastAPI): the service's endpoints over Execution and Runtime resources, acting as each caller."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import aiohttp
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from codeexec.client import errors
from codeexec.client.kubeapi import Connection, KubeApi
from codeexec.client.shapes import ExecuteRequest, ExecutionList, ExecutionResult, Language, ValidationResult
from codeexec.client.transports import KubeTransport
from codeexec.gateway import docs, problems, readiness
from codeexec.gateway.identity import Callers, bearer_token
from codeexec.gateway.limits import BodyLimit, WaitSlots, check_namespace_queue
from codeexec.gateway.readiness import ReadinessConfig
from codeexec.vocabulary import Phase

# The largest valid spec (code 100 KiB, stdin 256 KiB, input 128 KiB, env and args) fits with room for JSON escapes.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+)")


@dataclass(frozen=True)
class Settings:
    """What the gateway is told at start (its command line)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_wait_seconds: int = 300
    max_waits_per_caller: int = 16
    # Waiting Executions (queued, or not yet seen by the operator) a namespace may have before POST /execute
    # answers 429 and creates nothing; 0: no limit.
    max_queued_per_namespace: int = 0
    # The pod's token file and the operator Deployment, for /health/ready's CRD and operator checks.
    readiness: ReadinessConfig = field(default_factory=ReadinessConfig)


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": problems.Problem, "description": problems.TITLES[status]}
    for status in (401, 403, 404, 409, 413, 422, 429, 502, 504)
}


async def caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    namespace: Annotated[str | None, Query(description="Default: the token's service-account namespace.")] = None,
) -> KubeApi:
    """The Kubernetes API as the request's caller (its bearer token) in the namespace it acts in."""
    callers: Callers = request.app.state.callers
    return await callers.api(bearer_token(authorization), namespace)


Caller = Annotated[KubeApi, Depends(caller)]


def create_app(server: Connection, settings: Settings = Settings()) -> FastAPI:
    """The app; `server` says where the API server is and how to trust it (no credentials: each caller brings
    a token)."""
    slots = WaitSlots(settings.max_waits_per_caller)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            app.state.session = session
            app.state.callers = Callers(session, server)
            yield

    app = FastAPI(
        title="code-exec",
        version="0.1.0",
        description=(
            "Runs code in gVisor sandboxes as Kubernetes Executions. Send a Kubernetes bearer token "
            "(`kubectl create token NAME`): every call is made as that identity, so Kubernetes RBAC decides, "
            "in the token's service-account namespace unless `?namespace=` names another."
        ),
        lifespan=lifespan,
        responses=ERRORS,
        # Served from the package's own assets (docs.py): the defaults load Swagger UI and ReDoc from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    problems.install(app)
    docs.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.post("/execute", response_model=ExecutionResult, response_model_exclude_none=True, status_code=200)
    async def execute(
        body: ExecuteRequest,
        api: Caller,
        response: Response,
        prefer: Annotated[str | None, Header(description="wait=SECONDS: wait at most this long (RFC 7240).")] = None,
    ) -> ExecutionResult:
        """Creates an Execution. With `wait` (default) answers once it finished; else 202 with its Location.
        429 (and nothing created) when the namespace already has the gateway's limit of waiting Executions."""
        await check_namespace_queue(api, settings.max_queued_per_namespace)
        transport = KubeTransport(api)
        if not body.wait:
            created = await transport.execute(body)
            response.status_code = 202
            response.headers["Location"] = f"/executions/{created.id}?namespace={created.namespace}"
            return created
        seconds = wait_seconds(prefer, settings.max_wait_seconds)
        with slots.hold(api.connection.token or ""):
            result = await transport.execute(body, seconds)
        response.headers["Location"] = f"/executions/{result.id}?namespace={result.namespace}"
        return result

    @app.post("/validate", response_model=ValidationResult)
    async def validate(body: ExecuteRequest, api: Caller) -> ValidationResult:
        """Checks the request without running anything: the spec's rules, the installed languages, and the
        API server's own checks and admission webhooks in a dry run."""
        return await KubeTransport(api).validate(body)

    @app.get("/executions/{execution_id}", response_model=ExecutionResult, response_model_exclude_none=True)
    async def get_execution(execution_id: str, api: Caller) -> ExecutionResult:
        return await KubeTransport(api).get(execution_id)

    @app.get("/executions", response_model=ExecutionList, response_model_exclude_none=True)
    async def list_executions(
        api: Caller,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
        continue_: Annotated[str | None, Query(alias="continue")] = None,
        language: str | None = None,
        phase: Phase | None = None,
        label_selector: Annotated[str | None, Query(alias="labelSelector")] = None,
    ) -> ExecutionList:
        """Newest first. `continue` (from the previous page) or `offset` picks the page."""
        return await KubeTransport(api).list_page(limit, offset, continue_, language, phase, label_selector)

    @app.get(
        "/executions/{execution_id}/logs",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}},
    )
    async def logs(execution_id: str, api: Caller) -> StreamingResponse:
        """Server-sent events: `output` (one per line the program writes, while it runs; data: the line as a JSON
        string), then `result` (the finished Execution). Needs the right to read pods/log (the `view` role has it)."""
        transport = KubeTransport(api)
        await transport.get(execution_id)  # 404 or 403 as a problem, before the stream starts

        async def events() -> AsyncIterator[bytes]:
            try:
                async for kind, data in transport.output(execution_id, settings.max_wait_seconds):
                    payload = json.dumps(data) if kind == "output" else data
                    yield f"event: {kind}\ndata: {payload}\n\n".encode()
            except errors.CodeExecError as error:
                problem = json.dumps({"reason": error.reason, "detail": error.message, "id": execution_id})
                yield f"event: error\ndata: {problem}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.delete("/executions/{execution_id}", status_code=204)
    async def delete_execution(execution_id: str, api: Caller) -> Response:
        """Deletes the Execution (its sandbox goes with it)."""
        await KubeTransport(api).delete(execution_id)
        return Response(status_code=204)

    @app.get("/languages", response_model=list[Language], response_model_exclude_none=True)
    async def languages(api: Caller) -> list[Language]:
        return await KubeTransport(api).languages()

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness: the process serves requests."""
        return JSONResponse({"status": "ok"})

    @app.get("/health/ready")
    async def ready(request: Request) -> JSONResponse:
        """Readiness: the API server answers, the CRDs are Established and the operator Deployment has an
        available replica (these two read with the pod's own token: skipped, `null`, without a token file).
        200 when no check is false, else 503."""
        checks = await readiness.check(request.app.state.session, server, settings.readiness)
        ok = all(value is not False for value in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)

    return app


def wait_seconds(prefer: str | None, maximum: int) -> int:
    """`Prefer: wait=N` (RFC 7240) shortens the wait below the gateway's maximum, never lengthens it."""
    match = PREFER_WAIT.search(prefer or "")
    return min(int(match.group(1)), maximum) if match else maximum
