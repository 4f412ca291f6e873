"""The Python SDK: `Client` and `AsyncClient` run code as Executions, through the Kubernetes API or the gateway."""

from codeexec.client.clients import AsyncClient, Client
from codeexec.client.errors import (
    AlreadyExists,
    CodeExecError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RequestTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from codeexec.client.shapes import (
    ExecuteRequest,
    ExecutionList,
    ExecutionResult,
    FieldError,
    Language,
    ValidationResult,
)

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "CodeExecError",
    "ExecuteRequest",
    "ExecutionList",
    "ExecutionResult",
    "FieldError",
    "Forbidden",
    "InvalidRequest",
    "Language",
    "NotFound",
    "RequestTooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "ValidationResult",
    "WaitTimeout",
]
