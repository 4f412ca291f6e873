"""RFC 9457 problem details: the one JSON shape of every error the gateway answers with."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from codeexec.client import errors
from codeexec.client.shapes import FieldError

MEDIA_TYPE = "application/problem+json"
# The problem types are the stable reasons, under one URI prefix (RFC 9457 §3.1.1: a URI, not necessarily fetchable).
TYPE_PREFIX = "https://codeexec.io/problems/"
TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Already exists",
    413: "Request too large",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal error",
    502: "Kubernetes API error",
    503: "Unavailable",
    504: "Execution still running",
}


class Problem(BaseModel):
    """An error (RFC 9457), with `reason` (stable), `id` (an Execution's, when one exists) and `errors` (fields)."""

    type: str = Field(description="URI naming the kind of problem: the prefix and the reason.")
    title: str
    status: int
    detail: str
    instance: str | None = None
    reason: str
    id: str | None = None
    errors: list[FieldError] = Field(default_factory=list)


def problem_response(
    status: int,
    reason: str,
    detail: str,
    *,
    instance: str | None = None,
    execution_id: str | None = None,
    fields: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    problem = Problem(
        type=TYPE_PREFIX + reason,
        title=TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=instance,
        reason=reason,
        id=execution_id,
        errors=fields or [],
    )
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True), status, headers=headers, media_type=MEDIA_TYPE
    )


def for_error(error: errors.CodeExecError, instance: str | None = None) -> JSONResponse:
    # An Unavailable raised here means the API server failed or could not be reached: a bad gateway.
    status = 502 if isinstance(error, errors.Unavailable) else error.status
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(error, errors.TooManyRequests) and error.retry_after is not None:
        headers = {"Retry-After": str(error.retry_after)}
    fields = error.errors if isinstance(error, errors.InvalidRequest) else None
    return problem_response(
        status,
        error.reason,
        error.message,
        instance=instance,
        execution_id=error.execution_id,
        fields=fields,
        headers=headers,
    )


def _field_path(loc: tuple[Any, ...]) -> str:
    # ("body", "timeoutSeconds") → "timeoutSeconds"; ("query", "limit") → "limit".
    return ".".join(str(part) for part in loc[1:]) if len(loc) > 1 else ".".join(map(str, loc))


def install(app: FastAPI) -> None:
    """Every error, FastAPI's and Starlette's included, as a problem document."""

    async def on_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, errors.CodeExecError)
        return for_error(error, request.url.path)

    async def on_invalid(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        fields = [FieldError(field=_field_path(tuple(e["loc"])), message=e["msg"]) for e in error.errors()]
        detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
        return problem_response(422, errors.INVALID, detail, instance=request.url.path, fields=fields)

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        reason = {404: errors.NOT_FOUND, 405: "MethodNotAllowed"}.get(error.status_code, errors.BAD_REQUEST)
        return problem_response(error.status_code, reason, str(error.detail), instance=request.url.path)

    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        return problem_response(500, "InternalError", f"{type(error).__name__}: {error}", instance=request.url.path)

    app.add_exception_handler(errors.CodeExecError, on_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
