"""The PostgreSQL engine: the DSN read from the binding's Secret at call time (a pool per binding and Secret
version), each call one transaction (READ ONLY for a readOnly binding) with SET LOCAL statement_timeout and the
call's own deadline, and each statement sent alone through the extended protocol with PostgreSQL's own $1
placeholders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from codeexec.broker import statements
from codeexec.broker.engine import ExecRequest, ExecResult, QueryRequest, QueryResult, Target
from codeexec.broker.errors import (
    BackendUnavailable,
    BadRequest,
    BrokerError,
    ReadOnly,
    SqlError,
)
from codeexec.broker.kube import Kube, secret_text
from codeexec.broker.limits import CallLimits
from codeexec.broker.results import Rows

# Both results carry the call's duration, set once its transaction ended.
Result = TypeVar("Result", QueryResult, ExecResult)

# Connections one binding may hold at once; a call waits for one within its deadline.
POOL_SIZE = 4
CONNECT_TIMEOUT_SECONDS = 5.0
# The broker's own wait past the call's deadline before it cancels the call itself: the server's statement_timeout
# normally ends a statement first, but a script can lift it with its own SET LOCAL, and a script of many statements
# each within it would otherwise run on.
CANCEL_GRACE_SECONDS = 0.5
# Rows fetched from the server at a time: each batch is held whole before its rows are counted against the call's
# row and byte limits, so a small one keeps what a call holds near those limits (a single value is bounded by
# PostgreSQL alone: up to 1 GB).
FETCH_BATCH = 16
# Statements whose status message ends with the number of rows they changed.
WRITE_COMMANDS = ("INSERT", "UPDATE", "DELETE", "MERGE")
# Statements that end the call's transaction (PREPARE TRANSACTION too; a PREPARE of a statement is refused with
# it, which the extended protocol does not need).
TRANSACTION_CONTROL = frozenset({"COMMIT", "END", "ROLLBACK", "ABORT", "PREPARE"})
ENDED_TRANSACTION = "transaction control (COMMIT, ROLLBACK, ...) is not allowed: each call is one transaction"


class PostgresEngine:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube
        # (namespace, binding) → (the Secret's resourceVersion and key, the pool made from its DSN)
        self._pools: dict[tuple[str, str], tuple[str, asyncpg.Pool]] = {}
        self._lock = asyncio.Lock()
        # Pools of an earlier Secret version, closing once their calls finish.
        self._closing: set[asyncio.Task[None]] = set()

    async def query(self, target: Target, request: QueryRequest, limits: CallLimits) -> QueryResult:
        async def run(connection: asyncpg.Connection) -> QueryResult:
            return await _query(connection, request, limits)

        return await self._in_transaction(target, limits, run)

    async def exec(self, target: Target, request: ExecRequest, limits: CallLimits) -> ExecResult:
        async def run(connection: asyncpg.Connection) -> ExecResult:
            count = written = 0
            for statement in statements.split(request.sql, "postgres"):
                result = await _query(connection, QueryRequest(sql=statement, mode="run"), limits)
                _still_in_transaction(connection)
                count += 1
                written += result.rows_written
            return ExecResult(count, written, 0.0)

        return await self._in_transaction(target, limits, run)

    async def close(self) -> None:
        for _, pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        await asyncio.gather(*self._closing)

    async def _in_transaction(
        self, target: Target, limits: CallLimits, work: Callable[[asyncpg.Connection], Awaitable[Result]]
    ) -> Result:
        started = time.monotonic()
        deadline = limits.deadline()
        pool = await self._pool(target)
        try:
            # Connections are made here (the pool keeps none idle for long): a failure is the server's, not the
            # SQL's (a database that does not exist is a PostgresError too).
            connection = await pool.acquire(timeout=max(deadline - time.monotonic(), 0.001))
        except TimeoutError as error:
            raise limits.timed_out() from error
        except Exception as error:
            raise _unavailable(error) from error
        try:
            await connection.execute("BEGIN READ ONLY" if limits.read_only else "BEGIN")
            try:
                async with asyncio.timeout(deadline - time.monotonic() + CANCEL_GRACE_SECONDS):
                    await connection.execute(f"SET LOCAL statement_timeout = {int(limits.timeout_ms)}")
                    # A first query takes the transaction's snapshot: from then on PostgreSQL refuses to switch
                    # it to read-write (SET TRANSACTION READ WRITE would otherwise undo READ ONLY).
                    await connection.execute("SELECT 1")
                    result = await work(connection)
                _still_in_transaction(connection)
                await connection.execute("COMMIT")
            finally:
                if connection.is_in_transaction():
                    await connection.execute("ROLLBACK")
        except BrokerError:
            raise
        except Exception as error:
            raise _translated(error, limits) from error
        finally:
            await pool.release(connection)
        result.duration_ms = (time.monotonic() - started) * 1000
        return result

    async def _pool(self, target: Target) -> asyncpg.Pool:
        dsn, version = await self._dsn(target)
        key = (target.namespace, target.name)
        async with self._lock:
            found = self._pools.get(key)
            if found is not None and found[0] == version:
                return found[1]
            pool = asyncpg.create_pool(
                dsn,
                min_size=0,
                max_size=POOL_SIZE,
                max_inactive_connection_lifetime=60,
                timeout=CONNECT_TIMEOUT_SECONDS,
                reset=_discard_all,
                # DISCARD ALL drops the server's prepared statements too: none may be cached across calls.
                statement_cache_size=0,
                server_settings={"application_name": "codeexec-broker"},
            )
            try:
                await pool
            except Exception as error:
                raise _unavailable(error) from error
            self._pools[key] = (version, pool)
        if found is not None:
            # Calls still on the old DSN's connections finish; close() waits for them.
            closing = asyncio.get_running_loop().create_task(found[1].close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return pool

    async def _dsn(self, target: Target) -> tuple[str, str]:
        """The DSN and what identifies this version of it (the Secret's resourceVersion and key)."""
        ref = target.spec.dsn_secret_ref
        if ref is None:
            raise BackendUnavailable(f"the binding {target.name!r} names no dsnSecretRef")
        return await secret_text(self._kube, target.namespace, ref, target.name)


async def _query(connection: asyncpg.Connection, request: QueryRequest, limits: CallLimits) -> QueryResult:
    first_word = statements.first_word(request.sql, "postgres")
    if first_word == "COPY":
        # COPY talks its own protocol (and COPY TO/FROM a file or program would act on the server itself).
        message = "COPY is not allowed through the broker"
        raise ReadOnly(message) if limits.read_only else BadRequest(message)
    if first_word in TRANSACTION_CONTROL:
        # Refused before it runs: a COMMIT would already have committed the call's earlier statements.
        raise BadRequest(ENDED_TRANSACTION)
    statement = await connection.prepare(request.sql)
    rows = Rows(limits)
    if not statement.get_attributes():
        await statement.fetch(*request.params)
        command, _, count = (statement.get_statusmsg() or "").rpartition(" ")
        changes = int(count) if command.split(" ")[0] in WRITE_COMMANDS and count.isdigit() else 0
        return QueryResult([], changes, None, 0, changes)
    # Rows come through a cursor, a batch at a time: a huge result fails at the row limit instead of filling
    # the broker's memory. A portal has no status message: a write's RETURNING rows are its changes.
    write = statements.first_word(request.sql, "postgres") in WRITE_COMMANDS
    columns = [attribute.name for attribute in statement.get_attributes()]
    cursor = await statement.cursor(*request.params)
    read = 0
    while True:
        batch = await cursor.fetch(FETCH_BATCH)
        for record in batch:
            read += 1
            if request.mode == "all" or (request.mode == "first" and read == 1):
                rows.add(columns, list(record.values()))
        if len(batch) < FETCH_BATCH or (request.mode == "first" and not write):
            break
    changes = read if write else 0
    return QueryResult(rows.rows, changes, None, read, changes)


async def _discard_all(connection: asyncpg.Connection) -> None:
    """A released connection's reset, before it serves another call (maybe another Execution's): its session as
    new. asyncpg's own reset leaves temporary tables (which shadow real ones) and prepared statements; a reset that
    fails closes the connection instead."""
    await connection.execute("DISCARD ALL")


def _still_in_transaction(connection: asyncpg.Connection) -> None:
    """A statement that ended the call's transaction (COMMIT, ROLLBACK, ...) ends the call: what followed would
    run outside it, without READ ONLY and the statement timeout."""
    if not connection.is_in_transaction():
        raise BadRequest(ENDED_TRANSACTION)


def _translated(error: Exception, limits: CallLimits) -> BrokerError:
    if isinstance(error, asyncpg.ReadOnlySQLTransactionError):
        return ReadOnly(f"the binding is readOnly ({error})")
    if isinstance(error, (asyncpg.QueryCanceledError, TimeoutError)):
        return limits.timed_out()
    if isinstance(error, (asyncpg.PostgresConnectionError, asyncpg.ConnectionDoesNotExistError, OSError)):
        return _unavailable(error)
    if isinstance(error, asyncpg.PostgresError):
        return SqlError(str(error))
    if isinstance(error, asyncpg.InterfaceError):
        # Parameters that do not fit the statement's placeholders or types, a statement asyncpg cannot run.
        return BadRequest(str(error))
    return _unavailable(error)


def _unavailable(error: Exception) -> BackendUnavailable:
    """The kind of failure only: a connection error's text may name the server and user of the DSN."""
    return BackendUnavailable(f"the PostgreSQL server cannot be used ({type(error).__name__})")
