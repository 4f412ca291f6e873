"""The PostgreSQL engine against a real PostgreSQL server started for this module (initdb and pg_ctl on a unix
socket in a temp dir; as `nobody` when run as root, which PostgreSQL refuses). Skipped only when the server's
binaries are absent (Debian: apt-get install postgresql); CI=true turns that skip into a failure."""

from __future__ import annotations

import asyncio
import base64
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from codeexec.broker import postgres
from codeexec.broker.engine import ExecRequest, QueryRequest, QueryResult, Target
from codeexec.broker.errors import BrokerError
from codeexec.broker.limits import CallLimits
from codeexec.models import DbBinding

pytestmark = pytest.mark.postgres

WRITABLE = CallLimits(False, 1000, 100, "maxRowsPerCall 100", 64 * 1024)
READ_ONLY = CallLimits(True, 1000, 100, "maxRowsPerCall 100", 64 * 1024)


def _server_binaries() -> Path | None:
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1:]), None)
    return Path(initdb).resolve().parent if initdb else None


@pytest.fixture(scope="module")
def socket_dir() -> Iterator[Path]:
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server binaries are not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    data = root / "data"
    subprocess.run(
        [*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    options = f"-k {root} -c listen_addresses='' -c fsync=off"
    start = [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w"]
    subprocess.run([*start, "start"], check=True, capture_output=True)
    try:
        yield root
    finally:
        subprocess.run([*start[:-4], "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


class SecretKube:
    """The API holding one Secret with the DSN."""

    def __init__(self, dsn: str) -> None:
        self.secret: dict[str, Any] = {
            "metadata": {"resourceVersion": "1"},
            "data": {"dsn": base64.b64encode(dsn.encode()).decode()},
        }
        self.paths: list[str] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        self.paths.append(path)
        return self.secret if path.endswith("/secrets/pg") else None

    async def patch_status(self, namespace: str, name: str, uid: str, patch: dict[str, Any]) -> None:
        raise AssertionError("not used")

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        raise AssertionError("not used")


TARGET = Target("team-a", "pg", DbBinding(engine="postgres", dsn_secret_ref={"name": "pg", "key": "dsn"}))


class Calls:
    """Calls on one engine, on one event loop (asyncpg's pools belong to the loop that made them)."""

    def __init__(self, dsn: str) -> None:
        self.kube = SecretKube(dsn)
        self.engine = postgres.PostgresEngine(self.kube)
        self.loop = asyncio.new_event_loop()

    def query(
        self, sql: str, params: list[Any] | None = None, limits: CallLimits = WRITABLE, mode: str = "all"
    ) -> QueryResult:
        request = QueryRequest.model_validate({"sql": sql, "params": params or [], "mode": mode})
        result: QueryResult = self.loop.run_until_complete(self.engine.query(TARGET, request, limits))
        return result

    def exec(self, sql: str, limits: CallLimits = WRITABLE) -> int:
        return self.loop.run_until_complete(self.engine.exec(TARGET, ExecRequest(sql=sql), limits)).count

    def refused(
        self, sql: str, limits: CallLimits, exec_: bool = False, params: list[Any] | None = None
    ) -> BrokerError:
        call = (lambda: self.exec(sql, limits)) if exec_ else (lambda: self.query(sql, params, limits))
        with pytest.raises(BrokerError) as caught:
            call()
        return caught.value

    def rows(self) -> list[dict[str, Any]]:
        return self.query("SELECT a, b FROM t ORDER BY a").results

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()


@pytest.fixture
def db(socket_dir: Path) -> Iterator[Calls]:
    calls = Calls(f"postgresql://postgres@/postgres?host={socket_dir}")
    calls.exec("DROP TABLE IF EXISTS t; CREATE TABLE t(a int PRIMARY KEY, b text); INSERT INTO t VALUES (1, 'x')")
    yield calls
    calls.close()


@pytest.mark.parametrize(
    "payload", ["x'); DROP TABLE t; --", "1 OR 1=1", "$1", "'; COMMIT; INSERT INTO t VALUES (9, 'z'); --"]
)
def test_injection_through_parameters_is_inert(db: Calls, payload: str) -> None:
    db.query("INSERT INTO t VALUES ($1, $2)", [2, payload], mode="run")
    assert db.query("SELECT b FROM t WHERE b = $1", [payload]).results == [{"b": payload}]
    assert db.rows() == [{"a": 1, "b": "x"}, {"a": 2, "b": payload}]


def test_modes_meta_and_values(db: Calls) -> None:
    inserted = db.query("INSERT INTO t VALUES ($1, $2), ($3, $4)", [2, "y", 3, "z"], mode="run")
    assert (inserted.results, inserted.changes, inserted.rows_written) == ([], 2, 2)
    returned = db.query("UPDATE t SET b = b || '!' WHERE a > $1 RETURNING a", [1], mode="first")
    assert (returned.results, returned.changes) == ([{"a": 2}], 2)
    assert db.query("SELECT 1.50::numeric AS n, '\\x00ff'::bytea AS b, NULL AS z").results == [
        {"n": "1.50", "b": "AP8=", "z": None}
    ]


READ_ONLY_REFUSED = [
    "INSERT INTO t VALUES (2, 'y')",
    "UPDATE t SET b = 'y'",
    "DELETE FROM t",
    "CREATE TABLE u(a int)",
    "DROP TABLE t",
    "COPY t FROM STDIN",
    "COPY t TO STDOUT",
    "/* hidden */ copy t to '/tmp/out'",
    "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
]


@pytest.mark.parametrize("sql", READ_ONLY_REFUSED)
def test_read_only_refuses_writes_and_copy(db: Calls, sql: str) -> None:
    error = db.refused(sql, READ_ONLY)
    assert (error.status, error.code) == (403, "ReadOnly"), error.message
    assert db.rows() == [{"a": 1, "b": "x"}]


@pytest.mark.parametrize(
    "script",
    [
        "COMMIT; INSERT INTO t VALUES (2, 'y')",
        "ROLLBACK; INSERT INTO t VALUES (2, 'y')",
        "SET TRANSACTION READ WRITE; INSERT INTO t VALUES (2, 'y')",
        "SET LOCAL transaction_read_only = off; INSERT INTO t VALUES (2, 'y')",
        "SELECT 1; END; INSERT INTO t VALUES (2, 'y')",
    ],
)
def test_read_only_cannot_be_escaped_from_inside_the_transaction(db: Calls, script: str) -> None:
    error = db.refused(script, READ_ONLY, exec_=True)
    assert error.status in (400, 403), error.message
    assert db.rows() == [{"a": 1, "b": "x"}]


def test_writable_calls_cannot_end_their_transaction_either(db: Calls) -> None:
    error = db.refused("INSERT INTO t VALUES (2, 'y'); COMMIT; INSERT INTO t VALUES (3, 'z')", WRITABLE, exec_=True)
    assert error.code == "BadRequest"
    assert db.rows() == [{"a": 1, "b": "x"}]


def test_statement_timeout_cancels(db: Calls) -> None:
    error = db.refused("SELECT pg_sleep(5)", WRITABLE)
    assert (error.status, error.code) == (408, "StatementTimeout")
    # A script lifting the server's timeout is cancelled by the broker itself.
    error = db.refused("SET LOCAL statement_timeout = 0; SELECT pg_sleep(5)", WRITABLE, exec_=True)
    assert error.code == "StatementTimeout"
    assert db.query("SELECT 1 AS one").results == [{"one": 1}]  # the pool's connections still serve


def test_the_deadline_is_the_whole_calls_not_each_statements(db: Calls) -> None:
    """statementTimeoutMs (here 1000 ms) bounds a whole exec script, whose statements are each well within it."""
    started = time.monotonic()
    error = db.refused("SELECT pg_sleep(0.3); " * 6, WRITABLE, exec_=True)
    assert (error.status, error.code) == (408, "StatementTimeout"), error.message
    assert time.monotonic() - started < 1.8
    assert db.query("SELECT 1 AS one").results == [{"one": 1}]


def test_no_session_state_outlives_a_call(db: Calls) -> None:
    """A pooled connection serves the next call (maybe another Execution's) as a new session: a temporary table
    would shadow the real one, a session setting or a LISTEN would carry over."""
    db.exec("CREATE TEMP TABLE t(a int, b text); INSERT INTO t VALUES (666, 'poison'); LISTEN orders")
    db.exec("SET SESSION statement_timeout = 1; SET SESSION search_path = nope")
    assert db.rows() == [{"a": 1, "b": "x"}]
    db.query("INSERT INTO t VALUES (2, 'kept')", mode="run")
    assert db.rows() == [{"a": 1, "b": "x"}, {"a": 2, "b": "kept"}]
    assert db.query("SELECT count(*) AS n FROM pg_listening_channels()").results == [{"n": 0}]
    assert db.query("SELECT current_setting('search_path') AS p").results == [{"p": '"$user", public'}]


def test_row_and_byte_limits(db: Calls) -> None:
    assert len(db.query("SELECT generate_series(1, $1) AS x", [100]).results) == 100
    error = db.refused("SELECT generate_series(1, 10000000) AS x", WRITABLE)
    assert (error.status, error.code) == (413, "LimitExceeded")
    error = db.refused("SELECT repeat('x', 70000) AS big", WRITABLE)
    assert error.code == "LimitExceeded" and "maxBytesPerCall" in error.message


def test_rows_are_fetched_a_few_at_a_time(db: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows arrive in small batches, each counted against the byte limit as it comes: a result far past the limit
    fails after a few rows instead of the broker holding them all first."""
    fetched: list[int] = []
    fetch = asyncpg.cursor.Cursor.fetch

    async def counted(self: asyncpg.cursor.Cursor, n: int, *, timeout: float | None = None) -> list[Any]:
        batch: list[Any] = await fetch(self, n, timeout=timeout)
        fetched.append(len(batch))
        return batch

    monkeypatch.setattr(asyncpg.cursor.Cursor, "fetch", counted)
    error = db.refused("SELECT repeat('x', 10000) AS big FROM generate_series(1, 400)", WRITABLE)
    assert error.code == "LimitExceeded" and "maxBytesPerCall" in error.message
    assert sum(fetched) <= 32  # 7 rows of 10 kB pass 64 KiB


def test_errors(db: Calls) -> None:
    assert db.refused("SELECT nope FROM t", WRITABLE).message == 'column "nope" does not exist'
    assert db.refused("SELECT 1; SELECT 2", WRITABLE).code == "SqlError"
    assert db.refused("SELECT $1::int", WRITABLE).code == "BadRequest"  # a parameter missing
    error = db.refused("INSERT INTO t VALUES (2, 'y'); INSERT INTO t VALUES (1, 'dup')", WRITABLE, exec_=True)
    assert error.code == "SqlError" and "duplicate key" in error.message
    assert db.rows() == [{"a": 1, "b": "x"}]


def test_exec_counts_statements(db: Calls) -> None:
    script = "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; SELECT f(); DROP FUNCTION f();"
    assert db.exec(script) == 3


def test_the_dsn_is_read_at_each_call_and_a_new_secret_version_gets_a_new_pool(db: Calls, socket_dir: Path) -> None:
    db.query("SELECT 1")
    db.kube.secret["data"]["dsn"] = base64.b64encode(
        b"postgresql://postgres@/nope?host=" + str(socket_dir).encode()
    ).decode()
    db.query("SELECT 1")  # the same resourceVersion: the same pool
    db.kube.secret["metadata"]["resourceVersion"] = "2"
    error = db.refused("SELECT 1", WRITABLE)
    assert (error.status, error.code) == (503, "BackendUnavailable")
    assert "nope" not in error.message and "postgres@" not in error.message
    del db.kube.secret["data"]["dsn"]
    assert db.refused("SELECT 1", WRITABLE).code == "BackendUnavailable"


def test_a_statement_that_ends_the_transaction_stops_the_script(db: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second fence: without the check of the statement's first word, the transaction's end is seen after
    the COMMIT, before anything outside the transaction runs."""
    monkeypatch.setattr(postgres, "TRANSACTION_CONTROL", frozenset())
    error = db.refused("COMMIT; INSERT INTO t VALUES (2, 'y')", READ_ONLY, exec_=True)
    assert error.code == "BadRequest"
    assert db.rows() == [{"a": 1, "b": "x"}]
