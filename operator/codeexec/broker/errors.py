"""The broker's error codes: each a status and a stable code the sandbox libraries raise with the message."""

from __future__ import annotations


class BrokerError(Exception):
    """A call's failure as the code sees it: `{"error": {"code": ..., "message": ...}}` with `status`."""

    status = 500
    code = "Internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class Unauthorized(BrokerError):
    """No or a bad token, an unknown Execution or one not running: the message never says which (the detail
    goes to the broker's log and the Execution's Event only)."""

    status = 401
    code = "Unauthorized"
    MESSAGE = "the binding token is not valid for a running Execution"

    def __init__(self, detail: str) -> None:
        super().__init__(self.MESSAGE)
        self.detail = detail


class NotGranted(BrokerError):
    status = 403
    code = "NotGranted"


class ReadOnly(BrokerError):
    status = 403
    code = "ReadOnly"


class SqlError(BrokerError):
    status = 400
    code = "SqlError"


class BadRequest(BrokerError):
    status = 400
    code = "BadRequest"


class StatementTimeout(BrokerError):
    status = 408
    code = "StatementTimeout"


class LimitExceeded(BrokerError):
    status = 413
    code = "LimitExceeded"


class TooManyCalls(BrokerError):
    """More calls running at once than one Execution may have (or the whole broker): retry once one has ended."""

    status = 429
    code = "TooManyCalls"


class BackendUnavailable(BrokerError):
    status = 503
    code = "BackendUnavailable"


class ModelNotAllowed(BrokerError):
    """ai: a model the binding's `models` does not list."""

    status = 403
    code = "ModelNotAllowed"


class BudgetExceeded(BrokerError):
    """ai: the Execution has used its requests or tokens (maxRequestsPerExecution, maxTokensPerExecution)."""

    status = 429
    code = "BudgetExceeded"


class UpstreamError(BrokerError):
    """ai: the model endpoint could not be reached, answered an error, or answered what is not an OpenAI answer."""

    status = 502
    code = "UpstreamError"


class UpstreamTimeout(BrokerError):
    """ai: the model endpoint did not answer within requestTimeoutMs."""

    status = 504
    code = "UpstreamTimeout"


# Refusals (counted as `refused`, reported as a BindingRefused Event); other errors count as `errors`.
REFUSED_STATUSES = (401, 403)
