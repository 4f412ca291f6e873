"""The SDK's exceptions: one per HTTP status the API answers with, each with a stable reason, and their mapping."""

from __future__ import annotations

from typing import Any

from codeexec.client.shapes import FieldError

# Stable reasons of the errors (the `reason` of a problem document; Execution reasons are the status's own).
UNAUTHORIZED = "Unauthorized"
FORBIDDEN = "Forbidden"
NOT_FOUND = "NotFound"
ALREADY_EXISTS = "AlreadyExists"
INVALID = "Invalid"
TOO_LARGE = "RequestTooLarge"
TOO_MANY_REQUESTS = "TooManyRequests"
QUEUE_FULL = "QueueFull"  # a 429: the namespace has as many waiting Executions as the gateway allows
WAIT_TIMEOUT = "WaitTimeout"
UNAVAILABLE = "Unavailable"
BAD_REQUEST = "BadRequest"


class CodeExecError(Exception):
    """A call that failed. `status` is the HTTP status it maps to, `reason` a stable CamelCase name."""

    status = 500
    reason = UNAVAILABLE

    def __init__(self, message: str, *, reason: str | None = None, execution_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.execution_id = execution_id


class Unauthorized(CodeExecError):
    """No credentials, or credentials the API server does not accept."""

    status, reason = 401, UNAUTHORIZED


class Forbidden(CodeExecError):
    """The caller may not do this in that namespace (Kubernetes RBAC said no)."""

    status, reason = 403, FORBIDDEN


class NotFound(CodeExecError):
    status, reason = 404, NOT_FOUND


class AlreadyExists(CodeExecError):
    """An Execution of that name exists already."""

    status, reason = 409, ALREADY_EXISTS


class InvalidRequest(CodeExecError):
    """The request breaks a rule; `errors` name the fields. Also an Execution the operator Rejected: then
    `reason` is the status's stable reason (UnknownLanguage, TimeoutTooLong, ...) and `execution_id` is set."""

    status, reason = 422, INVALID

    def __init__(
        self,
        message: str,
        errors: list[FieldError] | None = None,
        *,
        reason: str | None = None,
        execution_id: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason, execution_id=execution_id)
        self.errors = errors or []


class RequestTooLarge(CodeExecError):
    status, reason = 413, TOO_LARGE


class TooManyRequests(CodeExecError):
    """Refused for now: `retry_after` (seconds, the Retry-After header) says when trying again makes sense."""

    status, reason = 429, TOO_MANY_REQUESTS

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        execution_id: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, reason=reason, execution_id=execution_id)
        self.retry_after = retry_after


class WaitTimeout(CodeExecError):
    """The Execution did not finish within the wait; it goes on: `execution_id` names it."""

    status, reason = 504, WAIT_TIMEOUT


class Expired(CodeExecError):
    """A watch asked for a version the API server no longer keeps (410): read afresh and watch again."""

    status, reason = 410, "Expired"


class Unavailable(CodeExecError):
    """The API server or the gateway could not be reached, or failed."""

    status, reason = 503, UNAVAILABLE


_BY_STATUS: dict[int, type[CodeExecError]] = {
    cls.status: cls
    for cls in (
        Unauthorized,
        Forbidden,
        NotFound,
        AlreadyExists,
        Expired,
        InvalidRequest,
        RequestTooLarge,
        TooManyRequests,
    )
}
_BY_STATUS[400] = InvalidRequest
_BY_STATUS[504] = WaitTimeout


def from_status(status: int, message: str, **extra: Any) -> CodeExecError:
    """The exception for an HTTP status (the gateway's or the API server's)."""
    cls = _BY_STATUS.get(status, Unavailable)
    if cls is InvalidRequest:
        return InvalidRequest(message, extra.get("errors"), reason=extra.get("reason"), execution_id=extra.get("id"))
    return cls(message, reason=extra.get("reason"), execution_id=extra.get("id"))
