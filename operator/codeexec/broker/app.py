"""The broker's HTTP API (FastAPI) for the sandboxes: POST /v1/db/{binding}/query and /exec, POST
/v1/ai/{binding}/run, GET /healthz. Each call: the access check, the binding's type, its limits or budgets, the
engine or model endpoint, then the counters, metrics and (refused) Event."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import aiohttp
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from codeexec.broker import access, metrics
from codeexec.broker.access import Caller, Grant, Refused
from codeexec.broker.ai import Endpoints, RunRequest, api_key
from codeexec.broker.engine import Engine, ExecRequest, QueryRequest
from codeexec.broker.errors import (
    REFUSED_STATUSES,
    BadRequest,
    BrokerError,
    LimitExceeded,
    ModelNotAllowed,
    Unauthorized,
)
from codeexec.broker.kube import Kube
from codeexec.broker.limits import (
    MAX_CALLS_IN_FLIGHT,
    MAX_CALLS_PER_EXECUTION,
    CallsInFlight,
    InferenceBudgets,
    RowBudgets,
)
from codeexec.broker.refusals import RefusalEvents
from codeexec.broker.usage import UsageWriter
from codeexec.models import BindingType

logger = logging.getLogger(__name__)

# The metric labels of a call refused before its binding is known to be the Execution's (the path and headers
# are the caller's words: they must not make label values).
UNKNOWN = "-"

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Answered:
    """A call served: the JSON the code gets and its counts for status.bindings (rowsRead, rowsWritten, tokens)."""

    payload: dict[str, Any]
    counts: Mapping[str, int]


Serve = Callable[[Grant, bytes], Awaitable[Answered]]


@dataclass(frozen=True)
class BrokerSettings:
    """What the app is given: the token key, how to reach the API and make the engines (by name) once it runs,
    and its limits."""

    token_key: bytes
    connect_kube: Callable[[aiohttp.ClientSession], Kube]
    make_engines: Callable[[Kube], Mapping[str, Engine]]
    max_body_bytes: int = 1024 * 1024
    usage_interval_seconds: float = 1.0
    max_calls_per_execution: int = MAX_CALLS_PER_EXECUTION
    max_calls_in_flight: int = MAX_CALLS_IN_FLIGHT


def create_app(settings: BrokerSettings) -> FastAPI:
    rows = RowBudgets()
    inference = InferenceBudgets()
    running = CallsInFlight(settings.max_calls_per_execution, settings.max_calls_in_flight)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            kube = settings.connect_kube(session)
            app.state.kube = kube
            app.state.usage = UsageWriter(kube, settings.usage_interval_seconds)
            app.state.refusals = RefusalEvents(kube)
            app.state.engines = settings.make_engines(kube)
            app.state.endpoints = Endpoints()
            try:
                yield
            finally:
                await app.state.usage.flush()
                for engine in app.state.engines.values():
                    await engine.close()
                await app.state.endpoints.close()

    app = FastAPI(title="code-exec broker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    async def answer(
        request: Request,
        binding: str,
        binding_type: BindingType,
        authorization: str | None,
        execution: str | None,
        serve: Serve,
    ) -> JSONResponse:
        started = time.monotonic()
        grant: Grant | None = None
        try:
            try:
                caller = Caller.from_headers(authorization, execution)
            except Unauthorized as error:
                raise Refused(error, None) from error
            grant = await access.check(request.app.state.kube, settings.token_key, caller, binding)
            with running.call(grant.uid):
                answered = await serve(grant, await _body(request, settings.max_body_bytes))
        except Refused as refused:
            return _refused(request, refused, binding, binding_type, started)
        except BrokerError as error:
            return _failed(request, grant, error, started)
        labels = _labels(grant)
        metrics.CALLS.labels(*labels).inc()
        metrics.DURATION.labels(*labels).observe(time.monotonic() - started)
        request.app.state.usage.record(grant.execution, binding, binding_type, answered.counts)
        return JSONResponse(answered.payload)

    def db_call(request: Request, exec_call: bool) -> Serve:
        async def serve(grant: Grant, body: bytes) -> Answered:
            target = grant.db()
            engine = request.app.state.engines[target.spec.engine]
            with rows.call(grant.uid, grant.binding, target.spec) as (limits, returned):
                if exec_call:
                    done = await engine.exec(target, _parsed(ExecRequest, body), limits)
                    read, written, payload = 0, done.rows_written, done.body()
                else:
                    result = await engine.query(target, _parsed(QueryRequest, body), limits)
                    returned[0] = len(result.results)
                    read, written, payload = len(result.results), result.rows_written, result.body()
            metrics.ROWS.labels(*_labels(grant), "read").inc(read)
            metrics.ROWS.labels(*_labels(grant), "written").inc(written)
            return Answered(payload, {"rowsRead": read, "rowsWritten": written})

        return serve

    def ai_call(request: Request) -> Serve:
        async def serve(grant: Grant, body: bytes) -> Answered:
            target = grant.ai()
            run = _parsed(RunRequest, body)
            if run.model not in target.spec.models:
                raise ModelNotAllowed(f"the binding {grant.binding!r} does not allow the model {run.model!r}")
            key = await api_key(request.app.state.kube, target)
            with inference.call(grant.uid, grant.binding, target.spec, run.max_tokens()) as spend:
                payload = await request.app.state.endpoints.run(target, run, key, spend)
            metrics.TOKENS.labels(*_labels(grant), run.model).inc(spend.tokens)
            return Answered(payload, {"tokens": spend.tokens})

        return serve

    @app.post("/v1/db/{binding}/query")
    async def query(
        request: Request,
        binding: str,
        authorization: Annotated[str | None, Header()] = None,
        x_codeexec_execution: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        return await answer(request, binding, "db", authorization, x_codeexec_execution, db_call(request, False))

    @app.post("/v1/db/{binding}/exec")
    async def exec_(
        request: Request,
        binding: str,
        authorization: Annotated[str | None, Header()] = None,
        x_codeexec_execution: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        return await answer(request, binding, "db", authorization, x_codeexec_execution, db_call(request, True))

    @app.post("/v1/ai/{binding}/run")
    async def run(
        request: Request,
        binding: str,
        authorization: Annotated[str | None, Header()] = None,
        x_codeexec_execution: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        return await answer(request, binding, "ai", authorization, x_codeexec_execution, ai_call(request))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return app


async def _body(request: Request, max_bytes: int) -> bytes:
    """The body, refused (413) once it passes max_bytes: never held whole when larger."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise LimitExceeded(f"the request body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parsed(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise BadRequest(f"{where}: {problem['msg']}" if where else problem["msg"]) from error


def _labels(grant: Grant | None) -> tuple[str, str, str]:
    """namespace, binding, engine: sqlite or postgres for a db binding, `ai` for an ai one."""
    if grant is None:
        return UNKNOWN, UNKNOWN, UNKNOWN
    return grant.namespace, grant.binding, grant.spec.db.engine if grant.spec.db else "ai"


def _refused(
    request: Request, refused: Refused, binding: str, binding_type: BindingType, started: float
) -> JSONResponse:
    error, execution = refused.error, refused.execution
    detail = getattr(error, "detail", error.message)
    logger.info("refused %r: %s", binding, detail)
    labels = (execution["metadata"]["namespace"], refused.binding, UNKNOWN) if execution and refused.binding else None
    labels = labels or (UNKNOWN, UNKNOWN, UNKNOWN)
    metrics.CALLS.labels(*labels).inc()
    metrics.REFUSED.labels(*labels, error.code).inc()
    metrics.DURATION.labels(*labels).observe(time.monotonic() - started)
    if execution is not None:  # the token matched it (access.check)
        request.app.state.refusals.report(execution, access.shown(binding), detail)
        if refused.binding is not None:
            request.app.state.usage.record(execution, refused.binding, binding_type, error=error, refused=True)
    return JSONResponse(error.body(), status_code=error.status)


def _failed(request: Request, grant: Grant | None, error: BrokerError, started: float) -> JSONResponse:
    """An error after the access check (or the API failing during it)."""
    labels = _labels(grant)
    metrics.CALLS.labels(*labels).inc()
    refused = error.status in REFUSED_STATUSES
    (metrics.REFUSED if refused else metrics.ERRORS).labels(*labels, error.code).inc()
    metrics.DURATION.labels(*labels).observe(time.monotonic() - started)
    if grant is not None:
        request.app.state.usage.record(grant.execution, grant.binding, grant.spec.type, error=error, refused=refused)
        if refused:
            request.app.state.refusals.report(grant.execution, grant.binding, error.message)
    return JSONResponse(error.body(), status_code=error.status)
