"""The broker's HTTP API (FastAPI) for the sandboxes: POST /v1/db/{binding}/query and /exec, GET /healthz.
Each call: the access check, its limits, the engine, then the counters, metrics and (refused) Event."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

import aiohttp
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from codeexec.broker import access, metrics
from codeexec.broker.access import Caller, Grant, Refused
from codeexec.broker.engine import Engine, ExecRequest, QueryRequest
from codeexec.broker.errors import REFUSED_STATUSES, BadRequest, BrokerError, LimitExceeded, Unauthorized
from codeexec.broker.kube import Kube
from codeexec.broker.limits import RowBudgets
from codeexec.broker.refusals import RefusalEvents
from codeexec.broker.usage import UsageWriter

logger = logging.getLogger(__name__)

# The metric labels of a call refused before its binding is known to be the Execution's (the path and headers
# are the caller's words: they must not make label values).
UNKNOWN = "-"

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class BrokerSettings:
    """What the app is given: the token key, how to reach the API and make the engines (by name) once it runs,
    and its limits."""

    token_key: bytes
    connect_kube: Callable[[aiohttp.ClientSession], Kube]
    make_engines: Callable[[Kube], Mapping[str, Engine]]
    max_body_bytes: int = 1024 * 1024
    usage_interval_seconds: float = 1.0


def create_app(settings: BrokerSettings) -> FastAPI:
    budgets = RowBudgets()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            kube = settings.connect_kube(session)
            app.state.kube = kube
            app.state.usage = UsageWriter(kube, settings.usage_interval_seconds)
            app.state.refusals = RefusalEvents(kube)
            app.state.engines = settings.make_engines(kube)
            try:
                yield
            finally:
                await app.state.usage.flush()
                for engine in app.state.engines.values():
                    await engine.close()

    app = FastAPI(title="code-exec broker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    async def answer(
        request: Request,
        binding: str,
        operation: Literal["query", "exec"],
        authorization: str | None,
        execution: str | None,
    ) -> JSONResponse:
        started = time.monotonic()
        grant: Grant | None = None
        try:
            try:
                caller = Caller.from_headers(authorization, execution)
            except Unauthorized as error:
                raise Refused(error, None) from error
            grant = await access.check(request.app.state.kube, settings.token_key, caller, binding)
            target = grant.target
            engine = request.app.state.engines[target.spec.engine]
            body = await _body(request, settings.max_body_bytes)
            with budgets.call(grant.uid, binding, target.spec) as (limits, returned):
                if operation == "query":
                    result = await engine.query(target, _parsed(QueryRequest, body), limits)
                    returned[0] = len(result.results)
                    rows_read, rows_written, payload = len(result.results), result.rows_written, result.body()
                else:
                    done = await engine.exec(target, _parsed(ExecRequest, body), limits)
                    rows_read, rows_written, payload = 0, done.rows_written, done.body()
        except Refused as refused:
            return _refused(request, refused, binding, started)
        except BrokerError as error:
            return _failed(request, grant, error, started)
        labels = _labels(grant)
        metrics.CALLS.labels(*labels).inc()
        metrics.ROWS.labels(*labels, "read").inc(rows_read)
        metrics.ROWS.labels(*labels, "written").inc(rows_written)
        metrics.DURATION.labels(*labels).observe(time.monotonic() - started)
        request.app.state.usage.record(grant.execution, binding, rows_read, rows_written)
        return JSONResponse(payload)

    @app.post("/v1/db/{binding}/query")
    async def query(
        request: Request,
        binding: str,
        authorization: Annotated[str | None, Header()] = None,
        x_codeexec_execution: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        return await answer(request, binding, "query", authorization, x_codeexec_execution)

    @app.post("/v1/db/{binding}/exec")
    async def exec_(
        request: Request,
        binding: str,
        authorization: Annotated[str | None, Header()] = None,
        x_codeexec_execution: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        return await answer(request, binding, "exec", authorization, x_codeexec_execution)

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
    if grant is None:
        return UNKNOWN, UNKNOWN, UNKNOWN
    return grant.target.namespace, grant.target.name, grant.target.spec.engine


def _refused(request: Request, refused: Refused, binding: str, started: float) -> JSONResponse:
    error, execution = refused.error, refused.execution
    detail = getattr(error, "detail", error.message)
    logger.info("refused %s: %s", binding, detail)
    labels = (execution["metadata"]["namespace"], refused.binding, UNKNOWN) if execution and refused.binding else None
    labels = labels or (UNKNOWN, UNKNOWN, UNKNOWN)
    metrics.CALLS.labels(*labels).inc()
    metrics.REFUSED.labels(*labels, error.code).inc()
    metrics.DURATION.labels(*labels).observe(time.monotonic() - started)
    if execution is not None:
        request.app.state.refusals.report(execution, binding, detail)
        if refused.binding is not None:
            request.app.state.usage.record(execution, refused.binding, error=error, refused=True)
    return JSONResponse(error.body(), status_code=error.status)


def _failed(request: Request, grant: Grant | None, error: BrokerError, started: float) -> JSONResponse:
    """An error after the access check (or the API failing during it)."""
    labels = _labels(grant)
    metrics.CALLS.labels(*labels).inc()
    refused = error.status in REFUSED_STATUSES
    (metrics.REFUSED if refused else metrics.ERRORS).labels(*labels, error.code).inc()
    metrics.DURATION.labels(*labels).observe(time.monotonic() - started)
    if grant is not None:
        request.app.state.usage.record(grant.execution, grant.target.name, error=error, refused=refused)
        if refused:
            request.app.state.refusals.report(grant.execution, grant.target.name, error.message)
    return JSONResponse(error.body(), status_code=error.status)
