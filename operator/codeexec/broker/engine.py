"""What the sandbox asks of a `db` binding and what it gets back: the request bodies, the results, and the
interface the SQLite and PostgreSQL engines both implement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from codeexec.broker.limits import CallLimits
from codeexec.broker.results import JsonRow
from codeexec.models import DbBinding

# The SQL of one call: far above any hand-written statement, well below the body limit.
MAX_SQL_CHARS = 256 * 1024
MAX_PARAMS = 1000
Scalar = None | bool | int | float | str


class QueryRequest(BaseModel):
    """POST /v1/db/{binding}/query: one statement, its parameters bound by the engine (never interpolated)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS)
    params: list[Scalar] = Field(default_factory=list, max_length=MAX_PARAMS)
    mode: Literal["all", "first", "run"] = "all"


class ExecRequest(BaseModel):
    """POST /v1/db/{binding}/exec: several statements, no parameters."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sql: str = Field(min_length=1, max_length=MAX_SQL_CHARS)


@dataclass(frozen=True)
class Target:
    """The binding a call goes to."""

    namespace: str
    name: str
    spec: DbBinding


@dataclass
class QueryResult:
    results: list[JsonRow] = field(default_factory=list)
    changes: int = 0
    last_row_id: int | None = None
    rows_read: int = 0
    rows_written: int = 0
    duration_ms: float = 0.0

    def body(self) -> dict[str, Any]:
        meta = {
            "changes": self.changes,
            "lastRowId": self.last_row_id,
            "rowsRead": self.rows_read,
            "rowsWritten": self.rows_written,
            "durationMs": round(self.duration_ms, 3),
        }
        return {"results": self.results, "meta": meta}


@dataclass
class ExecResult:
    count: int
    rows_written: int
    duration_ms: float

    def body(self) -> dict[str, Any]:
        return {"count": self.count, "durationMs": round(self.duration_ms, 3)}


class Engine(Protocol):
    async def query(self, target: Target, request: QueryRequest, limits: CallLimits) -> QueryResult: ...

    async def exec(self, target: Target, request: ExecRequest, limits: CallLimits) -> ExecResult: ...

    async def close(self) -> None: ...
