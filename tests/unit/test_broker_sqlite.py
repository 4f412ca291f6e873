"""The SQLite engine on real database files: parameters are inert, readOnly and the authorizer refuse what they
must (with the code ReadOnly), a runaway statement is interrupted, limits hold, each call is one transaction."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from codeexec.broker import statements
from codeexec.broker.engine import ExecRequest, QueryRequest, QueryResult, Target
from codeexec.broker.errors import BrokerError
from codeexec.broker.limits import CallLimits
from codeexec.broker.sqlite import MAX_DATABASE_NAME, Authorizer, SqliteEngine
from codeexec.models import DbBinding

TARGET = Target("team-a", "notes", DbBinding())
WRITABLE = CallLimits(False, 2000, 100, "maxRowsPerCall 100", 64 * 1024)
READ_ONLY = CallLimits(True, 2000, 100, "maxRowsPerCall 100", 64 * 1024)


@pytest.fixture
def engine(tmp_path: Path) -> SqliteEngine:
    engine = SqliteEngine(tmp_path)
    run(
        engine.exec(
            TARGET, ExecRequest(sql="CREATE TABLE t(a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'x');"), WRITABLE
        )
    )
    return engine


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def query(
    engine: SqliteEngine, sql: str, params: list[Any] | None = None, limits: CallLimits = WRITABLE, mode: str = "all"
) -> QueryResult:
    request = QueryRequest.model_validate({"sql": sql, "params": params or [], "mode": mode})
    result: QueryResult = run(engine.query(TARGET, request, limits))
    return result


def refused(engine: SqliteEngine, sql: str, limits: CallLimits, exec_: bool = False) -> BrokerError:
    call = (
        (lambda: run(engine.exec(TARGET, ExecRequest(sql=sql), limits)))
        if exec_
        else (lambda: query(engine, sql, limits=limits))
    )
    with pytest.raises(BrokerError) as caught:
        call()
    return caught.value


def rows(engine: SqliteEngine) -> list[dict[str, Any]]:
    return query(engine, "SELECT * FROM t ORDER BY rowid").results


def test_the_file_is_per_namespace_and_database(tmp_path: Path, engine: SqliteEngine) -> None:
    assert (tmp_path / "team-a" / "notes.sqlite3").exists()
    shared = Target("team-a", "notes-ro", DbBinding(database="notes"))
    assert run(engine.query(shared, QueryRequest(sql="SELECT b FROM t"), READ_ONLY)).results == [{"b": "x"}]


def test_a_database_name_too_long_for_a_file_is_refused_cleanly(tmp_path: Path) -> None:
    engine = SqliteEngine(tmp_path)
    longest = Target("team-a", "n" * MAX_DATABASE_NAME, DbBinding())
    assert run(engine.query(longest, QueryRequest(sql="SELECT 1 AS one"), WRITABLE)).results == [{"one": 1}]
    too_long = Target("team-a", "n" * 253, DbBinding())
    with pytest.raises(BrokerError) as caught:
        run(engine.query(too_long, QueryRequest(sql="SELECT 1"), WRITABLE))
    assert (caught.value.status, caught.value.code) == (503, "BackendUnavailable")
    assert "spec.db.database" in caught.value.message
    assert run(
        engine.query(Target("team-a", "n" * 253, DbBinding(database="short")), QueryRequest(sql="SELECT 1"), WRITABLE)
    )


def test_a_database_file_that_cannot_be_opened_is_backend_unavailable(tmp_path: Path) -> None:
    (tmp_path / "team-a").write_text("a file where the namespace's directory belongs")
    with pytest.raises(BrokerError) as caught:
        run(SqliteEngine(tmp_path).query(TARGET, QueryRequest(sql="SELECT 1"), WRITABLE))
    assert (caught.value.status, caught.value.code) == (503, "BackendUnavailable")
    assert str(tmp_path) not in caught.value.message


@pytest.mark.parametrize(
    "payload", ["x'); DROP TABLE t; --", "1 OR 1=1", "'; ATTACH DATABASE '/tmp/evil' AS e; --", "?", ":a"]
)
def test_injection_through_parameters_is_inert(engine: SqliteEngine, payload: str) -> None:
    query(engine, "INSERT INTO t VALUES (?, ?)", [2, payload], mode="run")
    assert query(engine, "SELECT b FROM t WHERE b = ?", [payload]).results == [{"b": payload}]
    assert query(engine, "SELECT count(*) AS n FROM t WHERE a = ?", ["1 OR 1=1"]).results == [{"n": 0}]
    assert len(rows(engine)) == 2


def test_named_and_numbered_placeholders(engine: SqliteEngine) -> None:
    assert query(engine, "SELECT ?2 AS two, ?1 AS one", [1, 2]).results == [{"two": 2, "one": 1}]
    assert query(engine, "SELECT :x AS x", [7]).results == [{"x": 7}]


def test_modes_and_meta(engine: SqliteEngine) -> None:
    inserted = query(engine, "INSERT INTO t VALUES (?, ?), (?, ?)", [2, "y", 3, "z"], mode="run")
    assert (inserted.results, inserted.changes, inserted.rows_written, inserted.last_row_id) == ([], 2, 2, 3)
    first = query(engine, "SELECT a FROM t ORDER BY a", mode="first")
    assert (first.results, first.rows_read) == ([{"a": 1}], 1)
    assert query(engine, "SELECT a FROM t", mode="run").results == []
    assert query(engine, "SELECT x'00ff' AS blob, 1.5 AS f, NULL AS n").results == [
        {"blob": "AP8=", "f": 1.5, "n": None}
    ]


WRITES = [
    "INSERT INTO t VALUES (2, 'y')",
    "UPDATE t SET b = 'y'",
    "DELETE FROM t",
    "CREATE TABLE u(a)",
    "CREATE TEMP TABLE u(a)",
    "DROP TABLE t",
    "ALTER TABLE t ADD COLUMN c",
    "CREATE INDEX i ON t(a)",
    "REPLACE INTO t VALUES (1, 'y')",
]
ALWAYS_REFUSED = [
    "ATTACH DATABASE 'other.sqlite3' AS other",
    "ATTACH DATABASE ':memory:' AS other",
    "DETACH DATABASE main",
    "PRAGMA writable_schema = ON",
    "PRAGMA writable_schema",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA database_list",
    "VACUUM INTO '/tmp/copy.sqlite3'",
    "VACUUM",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT hex(fts3_tokenizer('simple'))",
    "SELECT fts3_tokenizer('evil', x'4141414141414141')",
    "SELECT FTS3_TOKENIZER('simple', x'4141414141414141')",
    "SELECT rtreenode(2, x'00')",
    "BEGIN",
    "COMMIT",
]


@pytest.mark.parametrize("sql", WRITES + ALWAYS_REFUSED)
def test_read_only_refuses_writes_with_read_only(engine: SqliteEngine, sql: str) -> None:
    error = refused(engine, sql, READ_ONLY)
    assert (error.status, error.code) == (403, "ReadOnly"), error.message
    assert rows(engine) == [{"a": 1, "b": "x"}]


@pytest.mark.parametrize("sql", ALWAYS_REFUSED)
def test_writable_bindings_refuse_attach_pragmas_vacuum_extensions_too(engine: SqliteEngine, sql: str) -> None:
    error = refused(engine, sql, WRITABLE)
    assert error.code == "SqlError" and "not authorized" in error.message


def test_functions_beyond_the_allow_list_are_refused_inside_views_and_triggers_too(engine: SqliteEngine) -> None:
    """The authorizer sees a view's or trigger's function calls when a statement using it is prepared. (SQLite
    itself refuses fts3_tokenizer() there, as "unsafe use"; rtreenode() and sqlite_log() it lets through.)"""
    script = "CREATE VIEW v AS SELECT rtreenode(2, x'00') AS p;"
    script += " CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT sqlite_log(1, 'forged log line'); END;"
    run(engine.exec(TARGET, ExecRequest(sql=script), WRITABLE))
    assert "rtreenode" in refused(engine, "SELECT p FROM v", WRITABLE).message
    assert "sqlite_log" in refused(engine, "INSERT INTO t VALUES (2, 'y')", WRITABLE).message
    assert rows(engine) == [{"a": 1, "b": "x"}]


def test_common_functions_work(engine: SqliteEngine) -> None:
    sql = """SELECT upper(b) AS u, length(b) AS l, coalesce(NULL, a) AS c, printf('%03d', a) AS p,
        substr('abc', 2) AS s, round(2.5) AS r, abs(-a) AS ab, typeof(a) AS ty, b LIKE 'x' AS li, b GLOB 'x' AS gl,
        date('2026-12-02') AS d, strftime('%Y', '2026-12-02') AS y, julianday('2000-01-01') AS j,
        json_extract('{"k": [1, 2]}', '$.k[1]') AS je, '{"k": 3}' ->> 'k' AS arrow, json_object('a', a) AS jo,
        count(*) OVER () AS n, row_number() OVER (ORDER BY a) AS rn, sqrt(16) AS sq, iif(a, 'y', 'n') AS i,
        CURRENT_DATE IS NOT NULL AS now FROM t"""
    (row,) = query(engine, sql, limits=READ_ONLY).results
    assert row == {
        "u": "X", "l": 1, "c": 1, "p": "001", "s": "bc", "r": 3.0, "ab": 1, "ty": "integer", "li": 1, "gl": 1,
        "d": "2026-12-02", "y": "2026", "j": 2451544.5, "je": 2, "arrow": 3, "jo": '{"a":1}', "n": 1, "rn": 1,
        "sq": 4.0, "i": "y", "now": 1,
    }  # fmt: skip
    aggregates = "SELECT count(*) AS n, sum(a) AS s, avg(a) AS av, group_concat(b) AS g, json_group_array(a) AS ja"
    assert query(engine, aggregates + " FROM t").results == [{"n": 1, "s": 1, "av": 1.0, "g": "x", "ja": "[1]"}]
    script = "ALTER TABLE t RENAME COLUMN b TO bb; ALTER TABLE t ADD COLUMN c TEXT DEFAULT 'z'; ALTER TABLE t"
    script += " DROP COLUMN c; ALTER TABLE t RENAME TO t2; ALTER TABLE t2 RENAME TO t"
    assert run(engine.exec(TARGET, ExecRequest(sql=script), WRITABLE)).count == 5
    fts = "CREATE VIRTUAL TABLE docs USING fts4(body); INSERT INTO docs VALUES ('hello world');"
    run(engine.exec(TARGET, ExecRequest(sql=fts), WRITABLE))
    matched = "SELECT snippet(docs) AS s, length(matchinfo(docs)) > 0 AS m FROM docs WHERE docs MATCH 'hello'"
    assert query(engine, matched).results == [{"s": "<b>hello</b> world", "m": 1}]


def test_read_only_refuses_writes_hidden_in_a_script_or_a_cte(engine: SqliteEngine) -> None:
    error = refused(engine, "SELECT 1; INSERT INTO t VALUES (2, 'y');", READ_ONLY, exec_=True)
    assert error.code == "ReadOnly"
    error = refused(engine, "WITH x AS (SELECT 1) INSERT INTO t SELECT 2, 'y' FROM x", READ_ONLY)
    assert error.code == "ReadOnly"
    assert rows(engine) == [{"a": 1, "b": "x"}]


def test_read_only_schema_pragmas_are_allowed(engine: SqliteEngine) -> None:
    names = [row["name"] for row in query(engine, "PRAGMA table_info(t)", limits=READ_ONLY).results]
    assert names == ["a", "b"]
    # The table-valued form reaches the authorizer as an UPDATE of sqlite_master too: writable bindings only.
    assert query(engine, "SELECT name FROM pragma_table_info('t')").results[0] == {"name": "a"}


def test_vacuum_into_reaches_the_authorizer_as_an_attach(tmp_path: Path) -> None:
    """Outside a transaction (where the broker never runs statements), VACUUM INTO is an ATTACH of the target
    file to SQLite's authorizer: the authorizer alone stops it (and the attach limit stands behind it)."""
    copy = tmp_path / "copy.sqlite3"
    connection = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
    connection.execute("CREATE TABLE t(a)")
    authorizer = Authorizer(read_only=False)
    connection.set_authorizer(authorizer)
    with pytest.raises(sqlite3.DatabaseError, match="authoriz"):
        connection.execute(f"VACUUM INTO '{copy}'")
    assert authorizer.refusal is not None and "ATTACH" in authorizer.refusal
    connection.set_authorizer(None)
    connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    with pytest.raises(sqlite3.OperationalError, match="too many attached databases"):
        connection.execute(f"VACUUM INTO '{copy}'")
    assert not copy.exists()


def test_a_runaway_statement_is_interrupted(engine: SqliteEngine) -> None:
    limits = CallLimits(False, 200, 100, "maxRowsPerCall 100", 64 * 1024)
    # Bounded, so that without the deadline the test fails (after seconds) instead of hanging.
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 50000000) SELECT count(*) FROM c"
    error = refused(engine, endless, limits)
    assert (error.status, error.code) == (408, "StatementTimeout")
    error = refused(engine, f"INSERT INTO t SELECT 9, 'loop' FROM ({endless})", limits, exec_=True)
    assert error.code == "StatementTimeout"
    assert rows(engine) == [{"a": 1, "b": "x"}]


def test_the_deadline_is_the_whole_calls_not_each_statements(engine: SqliteEngine) -> None:
    """statementTimeoutMs bounds a whole exec script: ten statements of a third of it each do not run ten thirds."""
    counting = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {}) SELECT count(*) FROM c"
    started = time.monotonic()
    query(engine, counting.format(200_000))
    rows_per_second = 200_000 / (time.monotonic() - started)
    limits = CallLimits(False, 600, 100, "maxRowsPerCall 100", 64 * 1024)
    script = ";".join([counting.format(int(rows_per_second * 0.2))] * 10)
    started = time.monotonic()
    error = refused(engine, script, limits, exec_=True)
    assert (error.status, error.code) == (408, "StatementTimeout"), error.message
    assert time.monotonic() - started < 1.5


def test_calls_run_on_the_engines_own_workers(tmp_path: Path) -> None:
    """A long call does not take a thread of asyncio's default executor (the API client's name lookups use it)."""
    engine = SqliteEngine(tmp_path)
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 50000000) SELECT count(*) FROM c"
    limits = CallLimits(False, 1500, 100, "maxRowsPerCall 100", 64 * 1024)

    async def scenario() -> float:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1))
        long_call = asyncio.ensure_future(engine.query(TARGET, QueryRequest(sql=endless), limits))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await asyncio.to_thread(lambda: None)
        waited = time.monotonic() - started
        with pytest.raises(BrokerError):
            await long_call
        return waited

    assert run(scenario()) < 0.5
    run(engine.close())


def test_row_and_byte_limits(engine: SqliteEngine) -> None:
    many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT ?) SELECT x FROM c"
    assert len(query(engine, many, [100]).results) == 100
    error = refused(engine, many.replace("?", "101"), WRITABLE)
    assert (error.status, error.code) == (413, "LimitExceeded") and "maxRowsPerCall 100" in error.message
    error = refused(engine, "SELECT zeroblob(70000) AS big", WRITABLE)
    assert error.code == "LimitExceeded" and "maxBytesPerCall" in error.message
    assert len(query(engine, many.replace("?", "1000"), mode="run").results) == 0


@pytest.mark.parametrize(
    ("sql", "params"),
    [
        ("SELECT length(randomblob(1000000)) AS n", []),
        ("SELECT length(zeroblob(300000000)) AS n", []),
        ("SELECT length(group_concat(b)) AS n FROM (SELECT printf('%.1000c', 'x') AS b FROM generate)", []),
        ("INSERT INTO t VALUES (2, ?)", ["x" * 70000]),
    ],
)
def test_no_value_may_outgrow_the_byte_limit_even_unreturned(engine: SqliteEngine, sql: str, params: list[Any]) -> None:
    """A value is bounded by maxBytesPerCall while it is made, not only once returned: else one call can take the
    broker's memory (zeroblob(300000000) took it past 1 GB) while returning a few bytes."""
    generate = "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100) SELECT x FROM c)"
    with pytest.raises(BrokerError) as caught:
        query(engine, sql.replace("generate", generate), params)
    assert (caught.value.status, caught.value.code) == (413, "LimitExceeded"), caught.value.message
    assert "maxBytesPerCall" in caught.value.message
    assert rows(engine) == [{"a": 1, "b": "x"}]


def test_each_call_is_one_transaction(engine: SqliteEngine) -> None:
    error = refused(engine, "INSERT INTO t VALUES (2, 'y'); INSERT INTO nope VALUES (1);", WRITABLE, exec_=True)
    assert error.code == "SqlError" and "nope" in error.message
    assert rows(engine) == [{"a": 1, "b": "x"}]


def test_one_statement_per_query(engine: SqliteEngine) -> None:
    error = refused(engine, "SELECT 1; DELETE FROM t", WRITABLE)
    assert error.code == "BadRequest"
    assert rows(engine) == [{"a": 1, "b": "x"}]


def test_sql_errors_carry_sqlites_message(engine: SqliteEngine) -> None:
    error = refused(engine, "SELECT nope FROM t", WRITABLE)
    assert (error.status, error.code, error.message) == (400, "SqlError", "no such column: nope")


def test_exec_counts_statements_with_sqlite_quoting_and_triggers() -> None:
    script = """
        -- a comment; with a semicolon
        CREATE TABLE a(x TEXT DEFAULT 'a;b', "we;ird" INT, [br;acket] INT, `back;tick` INT);
        /* block; comment */
        CREATE TRIGGER tr AFTER INSERT ON a BEGIN UPDATE a SET x = 'c;d'; SELECT 1; END;
        INSERT INTO a(x) VALUES ('it''s; fine');
        ;;
    """
    pieces = statements.split(script, "sqlite")
    assert [statements.first_word(piece, "sqlite") for piece in pieces] == ["CREATE", "CREATE", "INSERT"]


def test_postgres_splitting_knows_dollar_quotes_escape_strings_and_nested_comments() -> None:
    script = "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql; SELECT E'a\\';b';"
    script += " /* outer /* inner; */ still; */ SELECT $$;$$; SELECT 'x'';'"
    pieces = statements.split(script, "postgres")
    assert [statements.first_word(piece, "postgres") for piece in pieces] == ["CREATE", "SELECT", "SELECT", "SELECT"]


@pytest.mark.parametrize("sql", WRITES[:3])
def test_read_only_files_refuse_writes_even_past_the_authorizer(
    engine: SqliteEngine, sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second fence: a readOnly binding's file is opened mode=ro, so a write the authorizer let through fails
    in SQLite itself, still as ReadOnly."""
    monkeypatch.setattr(Authorizer, "_refusal", lambda *_: None)
    error = refused(engine, sql, READ_ONLY)
    assert error.code == "ReadOnly" and "readonly" in error.message
    assert rows(engine) == [{"a": 1, "b": "x"}]
