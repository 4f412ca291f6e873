"""The SQLite engine: `<data dir>/<namespace>/<database>.sqlite3`, one connection and one transaction per call,
parameters bound, and an authorizer that decides what a statement may touch before it runs."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from codeexec.broker import statements
from codeexec.broker.engine import MAX_SQL_CHARS, ExecRequest, ExecResult, QueryRequest, QueryResult, Target
from codeexec.broker.errors import BackendUnavailable, BadRequest, BrokerError, LimitExceeded, ReadOnly, SqlError
from codeexec.broker.limits import CallLimits
from codeexec.broker.results import Rows

# PRAGMAs that only read the schema: everything else (writable_schema, journal_mode, foreign_keys=..., a
# database_list that shows the broker's paths, ...) is refused, whatever the binding.
READ_ONLY_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
    }
)
# What a readOnly binding may not do (SQLITE_* action codes).
WRITES = frozenset(
    {
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_CREATE_INDEX,
        sqlite3.SQLITE_CREATE_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_INDEX,
        sqlite3.SQLITE_CREATE_TEMP_TABLE,
        sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
        sqlite3.SQLITE_CREATE_TEMP_VIEW,
        sqlite3.SQLITE_CREATE_TRIGGER,
        sqlite3.SQLITE_CREATE_VIEW,
        sqlite3.SQLITE_CREATE_VTABLE,
        sqlite3.SQLITE_DROP_INDEX,
        sqlite3.SQLITE_DROP_TABLE,
        sqlite3.SQLITE_DROP_TEMP_INDEX,
        sqlite3.SQLITE_DROP_TEMP_TABLE,
        sqlite3.SQLITE_DROP_TEMP_TRIGGER,
        sqlite3.SQLITE_DROP_TEMP_VIEW,
        sqlite3.SQLITE_DROP_TRIGGER,
        sqlite3.SQLITE_DROP_VIEW,
        sqlite3.SQLITE_DROP_VTABLE,
        sqlite3.SQLITE_ALTER_TABLE,
        sqlite3.SQLITE_REINDEX,
        sqlite3.SQLITE_ANALYZE,
    }
)
# The SQL functions a statement may call (SQLITE_FUNCTION reaches the authorizer for each call when a statement is
# prepared, inside views and triggers too): SQLite's core scalar, aggregate, window, date, math and JSON functions,
# the FTS3/4/5 query helpers, and the internal helpers ALTER TABLE runs (SQLite lets no user statement call those).
# Everything else is refused: fts3_tokenizer() (which Debian's libsqlite3 enables) reads and writes raw pointers, a
# memory-corruption primitive; load_extension() loads code; rtree's node functions parse raw blobs; fts5() hands out
# a pointer; and a function that future SQLite versions add is refused until it is added here.
ALLOWED_FUNCTIONS = frozenset(
    {
        # core scalar
        *("abs", "changes", "char", "coalesce", "concat", "concat_ws", "format", "glob", "hex", "ifnull", "iif"),
        *("instr", "last_insert_rowid", "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min"),
        *("nullif", "octet_length", "printf", "quote", "random", "randomblob", "replace", "round", "rtrim", "sign"),
        *("soundex", "sqlite_source_id", "sqlite_version", "substr", "substring", "subtype", "total_changes"),
        *("trim", "typeof", "unhex", "unicode", "unistr", "unlikely", "upper", "zeroblob"),
        # aggregate and window
        *("avg", "count", "group_concat", "string_agg", "sum", "total"),
        *("row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead"),
        *("first_value", "last_value", "nth_value"),
        # date and time (CURRENT_TIMESTAMP and friends are functions too)
        *("date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff"),
        *("current_date", "current_time", "current_timestamp"),
        # math
        *("acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "ceiling", "cos", "cosh", "degrees"),
        *("exp", "floor", "ln", "log", "log10", "log2", "mod", "pi", "pow", "power", "radians", "sin", "sinh"),
        *("sqrt", "tan", "tanh", "trunc"),
        # JSON (-> and ->> are functions)
        *("json", "json_array", "json_array_length", "json_error_position", "json_extract", "json_group_array"),
        *("json_group_object", "json_insert", "json_object", "json_patch", "json_pretty", "json_quote"),
        *("json_remove", "json_replace", "json_set", "json_type", "json_valid", "->", "->>"),
        *("jsonb", "jsonb_array", "jsonb_extract", "jsonb_group_array", "jsonb_group_object", "jsonb_insert"),
        *("jsonb_object", "jsonb_patch", "jsonb_remove", "jsonb_replace", "jsonb_set"),
        # full-text search queries
        *("match", "snippet", "offsets", "matchinfo", "highlight", "bm25"),
        # ALTER TABLE's own
        *("sqlite_rename_column", "sqlite_rename_table", "sqlite_rename_test", "sqlite_rename_quotefix"),
        "sqlite_drop_column",
    }
)
ATTACH_REFUSAL = "ATTACH, DETACH and VACUUM are not allowed"
# Both results carry the call's duration, set once its transaction ended.
Result = TypeVar("Result", QueryResult, ExecResult)
# SQLite virtual machine instructions between two checks of the call's deadline.
PROGRESS_STEPS = 10_000
# Calls running at once, all namespaces together (sqlite3 blocks a thread per call). Twice what one Execution may
# run at once (app.py): no Execution can hold every worker. The workers are the engine's own, not asyncio's default
# executor, which the API client needs for its name lookups.
WORKERS = 8
# The longest database name: its files, the longest being `<name>.sqlite3-journal`, need names of at most 255 bytes
# (a SandboxBinding's name, the default, may have 253 characters).
MAX_DATABASE_NAME = 255 - len(".sqlite3-journal")
# The longest SQL text SQLite accepts: a call's SQL (at most MAX_SQL_CHARS) in UTF-8 (SQLite's own: 1 GB).
MAX_SQL_BYTES = 4 * MAX_SQL_CHARS


class Authorizer:
    """The sqlite3 authorizer of one call. Always refused: ATTACH and DETACH (VACUUM, VACUUM INTO included: SQLite
    runs them as an ATTACH of the target file, which reaches the authorizer as SQLITE_ATTACH), functions beyond
    ALLOWED_FUNCTIONS (load_extension() and fts3_tokenizer() among them), BEGIN/COMMIT/ROLLBACK (the broker makes
    each call one transaction) and PRAGMAs beyond READ_ONLY_PRAGMAS; with readOnly, every write. `refusal` says why
    the last statement was refused."""

    def __init__(self, read_only: bool) -> None:
        self.read_only = read_only
        self.refusal: str | None = None

    def __call__(
        self, action: int, arg1: str | None, arg2: str | None, database: str | None, source: str | None
    ) -> int:
        refusal = self._refusal(action, arg1, arg2)
        if refusal is None:
            return sqlite3.SQLITE_OK
        self.refusal = refusal
        return sqlite3.SQLITE_DENY

    def _refusal(self, action: int, arg1: str | None, arg2: str | None) -> str | None:
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return ATTACH_REFUSAL
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() not in ALLOWED_FUNCTIONS:
            return f"the function {arg2}() is not allowed"
        if action == sqlite3.SQLITE_TRANSACTION:
            return "BEGIN, COMMIT and ROLLBACK are not allowed: each call is one transaction"
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in READ_ONLY_PRAGMAS:
            return f"PRAGMA {arg1} is not allowed"
        if self.read_only and action in WRITES:
            return "the binding is readOnly"
        return None


class SqliteEngine:
    """Runs calls on its WORKERS threads (sqlite3 blocks); SQLite's file locks order concurrent writers."""

    def __init__(self, data_dir: Path, workers: int = WORKERS) -> None:
        # Absolute: a file URI (sqlite3.connect's) cannot be made of a relative path.
        self.data_dir = data_dir.absolute()
        self._workers = ThreadPoolExecutor(workers, thread_name_prefix="sqlite")

    def path(self, target: Target) -> Path:
        database = target.spec.database or target.name
        if len(database) > MAX_DATABASE_NAME:
            raise BackendUnavailable(
                f"the SandboxBinding's name is longer than {MAX_DATABASE_NAME} characters, too long for a database "
                "file: set spec.db.database"
            )
        return self.data_dir / target.namespace / f"{database}.sqlite3"

    async def query(self, target: Target, request: QueryRequest, limits: CallLimits) -> QueryResult:
        return await self._on_a_worker(target, limits, lambda call: call.query(request))

    async def exec(self, target: Target, request: ExecRequest, limits: CallLimits) -> ExecResult:
        def run(call: _Call) -> ExecResult:
            count = 0
            for statement in statements.split(request.sql, "sqlite"):
                call.run(statement, [])
                count += 1
            return ExecResult(count, call.changes(), 0.0)

        return await self._on_a_worker(target, limits, run)

    async def close(self) -> None:
        """Nothing stays open between calls but the idle workers."""
        self._workers.shutdown(wait=False)

    async def _on_a_worker(self, target: Target, limits: CallLimits, work: Callable[[_Call], Result]) -> Result:
        # The deadline starts now: a call that waited its whole time for a worker fails without running.
        deadline = limits.deadline()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._workers, self._in_transaction, target, limits, deadline, work)

    def _in_transaction(
        self, target: Target, limits: CallLimits, deadline: float, work: Callable[[_Call], Result]
    ) -> Result:
        started = time.monotonic()
        if started >= deadline:
            raise limits.timed_out()
        path = self.path(target)
        try:
            connection = self._connect(path, limits, deadline - started)
        except (OSError, sqlite3.Error) as error:
            # The volume's trouble, not the SQL's; the text would name the broker's paths.
            raise BackendUnavailable(f"the database file cannot be opened ({type(error).__name__})") from error
        try:
            connection.execute("BEGIN IMMEDIATE" if not limits.read_only else "BEGIN")
            call = _Call(connection, limits, deadline)
            connection.set_authorizer(call.authorizer)
            try:
                result = work(call)
            finally:
                connection.set_authorizer(None)
                connection.set_progress_handler(None, 0)
            connection.commit()
        except BrokerError:
            raise
        except sqlite3.Error as error:
            raise SqlError(str(error)) from error
        finally:
            connection.rollback()
            connection.close()
        result.duration_ms = (time.monotonic() - started) * 1000
        return result

    def _connect(self, path: Path, limits: CallLimits, seconds_left: float) -> sqlite3.Connection:
        if not path.exists():
            # Made on first use, by a writable connection even for a readOnly binding (an empty database).
            path.parent.mkdir(parents=True, exist_ok=True)
            made = sqlite3.connect(path)
            # Readers and one writer at once (the mode stays with the file).
            made.execute("PRAGMA journal_mode = WAL")
            made.close()
        mode = "ro" if limits.read_only else "rw"
        # The busy wait (another call holds the write lock) counts against the call's deadline too.
        connection = sqlite3.connect(
            f"{path.as_uri()}?mode={mode}",
            uri=True,
            timeout=seconds_left,
            isolation_level=None,
            check_same_thread=False,
        )
        # A second fence behind the authorizer: no database can be attached at all.
        connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        # No string, blob or row larger than what one call may return (SQLite's own maximum is 1 GB):
        # randomblob(), zeroblob(), printf(), group_concat() and the like fail at once (LimitExceeded) instead of
        # filling the broker's memory before the result's byte limit is checked.
        connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, limits.max_bytes)
        connection.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES)
        # As in D1: foreign keys enforced.
        connection.execute("PRAGMA foreign_keys = ON")
        return connection


class _Call:
    """The statements of one call on its connection, all within the call's deadline."""

    def __init__(self, connection: sqlite3.Connection, limits: CallLimits, deadline: float) -> None:
        self.connection = connection
        self.limits = limits
        self.authorizer = Authorizer(limits.read_only)
        self._changes_before = connection.total_changes
        self._deadline = deadline

    def changes(self) -> int:
        return self.connection.total_changes - self._changes_before

    def query(self, request: QueryRequest) -> QueryResult:
        before = self.connection.total_changes
        cursor = self.run(request.sql, request.params)
        rows = Rows(self.limits)
        columns = [column[0] for column in cursor.description or ()]
        read = 0
        try:
            for values in cursor:
                read += 1
                if request.mode == "all" or (request.mode == "first" and read == 1):
                    rows.add(columns, values)
                if request.mode == "first":
                    break
        except sqlite3.Error as error:
            raise self._translated(error) from error
        finally:
            cursor.close()
        changes = self.connection.total_changes - before
        last_row_id = cursor.lastrowid if changes else None
        return QueryResult(rows.rows, changes, last_row_id, read, changes)

    def run(self, sql: str, params: list[Any]) -> sqlite3.Cursor:
        self.authorizer.refusal = None
        if statements.first_word(sql, "sqlite") == "VACUUM":
            # Refused by name, clearly: inside the call's transaction SQLite would only say "cannot VACUUM
            # from within a transaction", and behind that stand the authorizer and the attach limit.
            raise self._refused(ATTACH_REFUSAL)
        self.connection.set_progress_handler(self._past_deadline, PROGRESS_STEPS)
        try:
            return self.connection.execute(sql, params)
        except sqlite3.ProgrammingError as error:
            # More than one statement, or parameters that do not fit the placeholders.
            raise BadRequest(str(error)) from error
        except sqlite3.Error as error:
            raise self._translated(error) from error

    def _past_deadline(self) -> int:
        """Non-zero interrupts the statement (sqlite3.OperationalError "interrupted")."""
        return int(time.monotonic() > self._deadline)

    def _refused(self, refusal: str) -> BrokerError:
        return ReadOnly(refusal) if self.limits.read_only else SqlError(f"not authorized: {refusal}")

    def _translated(self, error: sqlite3.Error) -> BrokerError:
        refusal = self.authorizer.refusal
        code = getattr(error, "sqlite_errorcode", None)
        if refusal is not None:
            return self._refused(refusal)
        if code == sqlite3.SQLITE_READONLY:
            return ReadOnly(f"the binding is readOnly ({error})")
        if code == sqlite3.SQLITE_TOOBIG:
            return LimitExceeded(f"a value is larger than {self.limits.max_bytes} bytes (maxBytesPerCall)")
        if code == sqlite3.SQLITE_INTERRUPT:
            return self.limits.timed_out()
        return SqlError(str(error))
