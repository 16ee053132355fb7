"""A read of the API's that Postgres cancels (an operator's ``pg_cancel_backend``, a
``statement_timeout``): Postgres answered, it is not away. The client is told its read was
cancelled (503 READ_CANCELLED or READ_STATEMENT_TIMEOUT, with Retry-After), never "cannot be
reached" (READ_MODELS_UNAVAILABLE), and the pooled connection serves the next read. Which
cancel it was is told alike on a server speaking English and on one speaking German (its
messages translated: tests/tools/translated_postgres.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.logging import LogThrottle
from jobrunner.common.postgresconnect import STATEMENT_TIMEOUT_MESSAGE
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api import errors, readmodelgate
from tests.history_support import job_events, publish, reading_system, wait_projected
from tests.system import System
from tests.tools.api_parts import health_pool_of, pooled_connections, read_pool_of
from tests.tools.backend_activity import backends, until_backends, until_no_backends
from tests.tools.health_reports import codes, health
from tests.tools.postgres_log import lines_logged
from tests.tools.translated_postgres import (
    ENGLISH,
    ENGLISH_DIVISION_BY_ZERO,
    GERMAN,
    division_by_zero_message,
    postgres_speaking,
)


@pytest.fixture
async def postgres(
    request: pytest.FixtureRequest, compiled_locales: Path
) -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres of the test's own, speaking English unless the test names another locale
    (``IN_EITHER_LANGUAGE``), with the server settings a test names (``FEW_CONNECTIONS``)."""
    param = getattr(request, "param", ENGLISH)
    locale, settings = (ENGLISH, param) if isinstance(param, dict) else (param, {})
    async with postgres_speaking(
        locale, "jobrunner-test-own-pg-", compiled_locales, **settings
    ) as server:
        yield server


# The test runs on a server speaking English and on one speaking German.
IN_EITHER_LANGUAGE = pytest.mark.parametrize(
    "postgres", [ENGLISH, GERMAN], indirect=True, ids=["english", "german"]
)
# The test runs on a server of few connections, which it can take all of.
FEW_CONNECTIONS = pytest.mark.parametrize(
    "postgres", [{"max_connections": "30"}], indirect=True, ids=["30-connections"]
)

# The test runs on each read answered in front of Litestar (jobs_fastpath.py): the list of jobs
# and a job's log, with the table each reads.
EACH_FAST_READ = pytest.mark.parametrize(
    ("path", "table"),
    [("/api/jobs", "jobs"), ("/api/jobs/before/logs", "log_lines")],
    ids=["list", "log"],
)


@pytest.fixture
def gate_watch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-model gate's looks in the background: the API's own, or, a test naming it
    (``QUIET_GATE``), none within the test (each look takes a connection from the read pool,
    and so would be refused with the test's read when the test takes every slot)."""
    seconds = getattr(request, "param", None)
    if seconds is not None:
        monkeypatch.setattr(readmodelgate, "CURRENT_CHECK_SECONDS", seconds)
        monkeypatch.setattr(readmodelgate, "RECHECK_SECONDS", seconds)


# The gate looks once at the start, and then only when a request finds it not serving.
QUIET_GATE = pytest.mark.parametrize("gate_watch", [3600.0], indirect=True, ids=["quiet-gate"])


@pytest.fixture
def health_bound(request: pytest.FixtureRequest) -> float:
    """``health_postgres_timeout_seconds``: the default, or what the test names
    (``PATIENT_HEALTH``)."""
    bound: float = getattr(request, "param", Settings().health_postgres_timeout_seconds)
    return bound


# Health's bound far above the database's 300 ms timeouts: on a loaded machine the cancel is
# Postgres', never health's own (700 ms apart at the default 1 s).
PATIENT_HEALTH = pytest.mark.parametrize("health_bound", [5.0], indirect=True, ids=["health-5s"])


@pytest.fixture
async def system(
    settings: Settings, postgres: EmbeddedPostgres, gate_watch: None, health_bound: float
) -> AsyncIterator[System]:
    settings = msgspec.structs.replace(
        settings, database_url=postgres.url, health_postgres_timeout_seconds=health_bound
    )
    async with reading_system(settings) as running:
        await wait_projected(settings, await publish(settings, job_events("before")))
        yield running


async def read_job(system: System) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with system.client() as client:
        response = await client.get("/api/jobs/before")
    return response.status_code, dict(response.headers), response.json()


@asynccontextmanager
async def database_setting(
    operator: asyncpg.Connection, pool: asyncpg.Pool, setting: str, milliseconds: int = 300
) -> AsyncIterator[None]:
    """The database's ``setting`` (a timeout) at ``milliseconds`` for ``pool``'s connections:
    those it holds are ended, its next ones take the database's setting; reset after, and the
    pool's connections ended again."""
    database = await operator.fetchval("SELECT current_database()")
    try:
        await operator.execute(f'ALTER DATABASE "{database}" SET {setting} = {milliseconds}')
        await pool.expire_connections()
        yield
    finally:
        await operator.execute(f'ALTER DATABASE "{database}" RESET {setting}')
        await pool.expire_connections()


async def read_with_its_table_locked_past(
    system: System, postgres: EmbeddedPostgres, setting: str, message: str, path: str, table: str
) -> tuple[httpx.Response, int]:
    """``path`` read while another session holds ``table`` locked past the database's
    ``setting`` (300 ms): the answer, and how many statements Postgres logged ``message`` of
    meanwhile."""
    operator = await asyncpg.connect(postgres.url)
    try:
        async with database_setting(operator, read_pool_of(system).pool, setting):
            before = await lines_logged(postgres, operator, message)
            async with operator.transaction():
                await operator.execute(f"LOCK TABLE {READ_SCHEMA}.{table} IN ACCESS EXCLUSIVE MODE")
                async with system.client() as client:
                    response = await client.get(path)
            cancelled = await lines_logged(postgres, operator, message) - before
    finally:
        await operator.close()
    return response, cancelled


# The job read's own statement (readmodels.job_row) as pg_stat_activity shows it: no other
# backend (the projector's, a stream's) is taken for it.
JOB_READ_TEXT = f"%FROM {READ_SCHEMA}.jobs WHERE id = $1%"


@IN_EITHER_LANGUAGE
async def test_a_read_cancelled_by_the_operator_is_told_as_cancelled_and_the_pool_serves_on(
    system: System, postgres: EmbeddedPostgres
) -> None:
    """A read waits on a lock another session holds on the jobs' table; the operator cancels
    it (pg_cancel_backend) long before the database's statement_timeout (an hour). Before the
    fix: 503 READ_MODELS_UNAVAILABLE, "cannot be reached just now", with Postgres answering all
    along."""
    operator = await asyncpg.connect(postgres.url)
    pool = read_pool_of(system).pool
    try:
        database = await operator.fetchval("SELECT current_database()")
        await operator.execute(f"ALTER DATABASE \"{database}\" SET statement_timeout = '1h'")
        await pool.expire_connections()  # the API's next connections take the database's setting
        # The API serves and its pool is warm: the read below goes straight to its statement.
        status, _, body = await read_job(system)
        assert status == 200, body
        locker = operator.transaction()
        await locker.start()
        await operator.execute(f"LOCK TABLE {READ_SCHEMA}.jobs IN ACCESS EXCLUSIVE MODE")
        reading = asyncio.ensure_future(read_job(system))
        # Looked for on the lock's own transaction: backend_activity clears the snapshot of
        # pg_stat_activity that Postgres keeps for a transaction (b3126bb's flake).
        [cancelled] = await until_backends(
            operator, query_like=JOB_READ_TEXT, waiting_on_a_lock=True, unless_ended=reading
        )
        assert await operator.fetchval("SELECT pg_cancel_backend($1)", cancelled)
        status, headers, body = await reading
        await locker.rollback()
        assert status == 503, body
        assert body["error"]["code"] == "READ_CANCELLED", body
        assert "cancelled" in body["error"]["message"], body
        assert headers.get("retry-after") == str(errors.READ_CANCELLED_RETRY_AFTER), headers
        # The connection whose statement was cancelled is alive and serves the next read.
        assert await backends(operator, pid=cancelled) == [cancelled], (
            "the cancelled read's connection was ended"
        )
    finally:
        await operator.close()
    status, _, body = await read_job(system)
    assert status == 200, body
    assert pool.get_idle_size() == pool.get_size()


@IN_EITHER_LANGUAGE
async def test_a_read_past_postgres_statement_timeout_is_told_as_too_long(
    system: System, postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database's statement_timeout (set by its operator, 300 ms here) ends a read that
    waits on a lock: 503 READ_STATEMENT_TIMEOUT, the read took too long; not "cannot be
    reached". In German the log line says what it was told by: how long the read ran, and the
    timeout. Before the fix: 503 READ_MODELS_UNAVAILABLE; before session 37, on the server
    speaking German, 503 READ_CANCELLED (Postgres's message was read, in English only)."""
    # A throttle of this test's own: another test's line in the last 10 s leaves none out.
    monkeypatch.setattr(errors, "POSTGRES_CANCELLED_LOG", LogThrottle(errors.REFUSAL_LOG_INTERVAL))
    operator = await asyncpg.connect(postgres.url)
    german = await division_by_zero_message(postgres) != ENGLISH_DIVISION_BY_ZERO
    try:
        async with database_setting(operator, read_pool_of(system).pool, "statement_timeout"):
            with capture_logs() as logs:
                async with operator.transaction():
                    await operator.execute(
                        f"LOCK TABLE {READ_SCHEMA}.jobs IN ACCESS EXCLUSIVE MODE"
                    )
                    status, headers, body = await read_job(system)
            [line] = [
                line for line in logs if line["event"] == "a read's statement cancelled by Postgres"
            ]
            if german:
                assert line["statement_timeout_seconds"] == pytest.approx(0.3), line
                assert line["ran_seconds"] >= 0.29, line  # 0.3 s less the clocks' margin, rounded
            else:  # Postgres's English message said it: no run recorded
                assert "ran_seconds" not in line, line
            assert status == 503, body
            assert body["error"]["code"] == "READ_STATEMENT_TIMEOUT", body
            assert "statement_timeout" in body["error"]["message"], body
            assert headers.get("retry-after") == str(errors.READ_CANCELLED_RETRY_AFTER), headers
            status, _, body = await read_job(system)
            assert status == 200, body
    finally:
        await operator.close()


@EACH_FAST_READ
async def test_a_fast_read_past_postgres_statement_timeout_runs_once(
    system: System, postgres: EmbeddedPostgres, path: str, table: str
) -> None:
    """The list of jobs and a job's log (answered in front of Litestar, jobs_fastpath.py), their
    table locked past the database's statement_timeout (300 ms): 503 READ_STATEMENT_TIMEOUT
    after one statement cancelled, the client waiting the timeout once. Before: the fast path
    handed the error over to Litestar, which ran the same read again, and Postgres cancelled
    it twice."""
    response, cancelled = await read_with_its_table_locked_past(
        system, postgres, "statement_timeout", STATEMENT_TIMEOUT_MESSAGE, path, table
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "READ_STATEMENT_TIMEOUT", response.text
    assert response.headers.get("retry-after") == str(errors.READ_CANCELLED_RETRY_AFTER)
    assert cancelled == 1, "the read ran again after Postgres cancelled it"


# A Postgres error of each transient SQLSTATE class, as a read meets it, and the API's answer:
# (SQLSTATE, status, code, Retry-After). 57000 is asyncpg's bare OperatorInterventionError, 57P99
# and 40P99 SQLSTATEs asyncpg has no class for (UnknownPostgresError). XX000, an internal error
# no retry mends, is the API's 500, without Retry-After.
STAGED_ANSWERS = [
    ("57000", 503, "READ_MODELS_UNAVAILABLE", "2"),
    ("57P99", 503, "READ_MODELS_UNAVAILABLE", "2"),
    ("40P01", 503, "READ_CONFLICT", "1"),
    ("40001", 503, "READ_CONFLICT", "1"),
    ("40P99", 503, "READ_CONFLICT", "1"),
    ("53200", 503, "READ_MODELS_OVERLOADED", "5"),
    ("55P03", 503, "READ_STATEMENT_TIMEOUT", "5"),
    ("XX000", 500, "INTERNAL_ERROR", None),
]


async def failing_calls(operator: asyncpg.Connection) -> int:
    """How often the staged failing function has run (its sequence's last value; 0: never)."""
    last: int = await operator.fetchval(
        f"SELECT coalesce(last_value, 0) FROM pg_sequences "
        f"WHERE schemaname = '{READ_SCHEMA}' AND sequencename = 'jobs_failing_calls'"
    )
    return last


async def test_a_read_failing_in_postgres_for_now_is_a_503_naming_why_never_a_500(
    system: System, postgres: EmbeddedPostgres
) -> None:
    """The jobs' table is put behind a view whose function raises an error of each transient
    SQLSTATE class (an operator's intervention, a deadlock or serialization failure, resources
    short, a lock_timeout; Postgres raises them itself only under faults hard to stage): the
    list of jobs is answered 503 with a code naming it and Retry-After, the read run once, and
    once the table is back, 200. An internal error (XX000) is a 500, its read run once too.
    Before session 36: 500 INTERNAL_ERROR for each; before session 38 the fast path handed
    each over to Litestar, which ran the read a second time."""
    operator = await asyncpg.connect(postgres.url)
    pool = read_pool_of(system).pool
    answers: dict[str, tuple[int, str | None, str]] = {}
    runs: dict[str, int] = {}
    try:
        async with operator.transaction():
            await operator.execute(f"ALTER TABLE {READ_SCHEMA}.jobs RENAME TO jobs_behind_view")
            await operator.execute(f"CREATE SEQUENCE {READ_SCHEMA}.jobs_failing_calls")
            await operator.execute(
                f"CREATE FUNCTION {READ_SCHEMA}.jobs_failing() RETURNS SETOF "
                f"{READ_SCHEMA}.jobs_behind_view LANGUAGE plpgsql AS $$ BEGIN "
                # Counted outside the read's transaction, which the error rolls back.
                f"PERFORM nextval('{READ_SCHEMA}.jobs_failing_calls'); "
                "RAISE EXCEPTION 'staged' USING ERRCODE = current_setting('test.errcode'); "
                "END $$"
            )
            await operator.execute(
                f"CREATE VIEW {READ_SCHEMA}.jobs AS SELECT * FROM {READ_SCHEMA}.jobs_failing()"
            )
        database = await operator.fetchval("SELECT current_database()")
        for sqlstate, _, _, _ in STAGED_ANSWERS:
            # Each new session of the API's takes the database's setting.
            await operator.execute(f"ALTER DATABASE \"{database}\" SET test.errcode = '{sqlstate}'")
            await pool.expire_connections()
            calls_before = await failing_calls(operator)
            async with system.client() as client:
                response = await client.get("/api/jobs")
            answers[sqlstate] = (
                response.status_code,
                response.headers.get("retry-after"),
                response.json()["error"]["code"],
            )
            runs[sqlstate] = await failing_calls(operator) - calls_before
    finally:
        async with operator.transaction():
            await operator.execute(f"DROP VIEW IF EXISTS {READ_SCHEMA}.jobs")
            await operator.execute(f"DROP FUNCTION IF EXISTS {READ_SCHEMA}.jobs_failing()")
            await operator.execute(f"DROP SEQUENCE IF EXISTS {READ_SCHEMA}.jobs_failing_calls")
            await operator.execute(f"ALTER TABLE {READ_SCHEMA}.jobs_behind_view RENAME TO jobs")
        await operator.close()
        await pool.expire_connections()
    assert answers == {
        sqlstate: (status, retry_after, code)
        for sqlstate, status, code, retry_after in STAGED_ANSWERS
    }
    # Answered by the fast path (jobs_fastpath.py) once: Litestar did not run the read again.
    assert runs == dict.fromkeys(answers, 1)
    async with system.client() as client:
        response = await client.get("/api/jobs")
    assert response.status_code == 200, response.text


# What Postgres logs of a statement its lock_timeout cancelled (its English message).
LOCK_TIMEOUT_MESSAGE = "canceling statement due to lock timeout"


@EACH_FAST_READ
async def test_a_fast_read_past_postgres_lock_timeout_runs_once(
    system: System, postgres: EmbeddedPostgres, path: str, table: str
) -> None:
    """The list of jobs and a job's log, their table locked by another session past the
    database's lock_timeout (300 ms): 503 READ_STATEMENT_TIMEOUT naming lock_timeout after one
    wait, Postgres cancelling the read once. Before: the fast path handed the error over to
    Litestar, which ran the same read again, and the client waited the lock_timeout twice."""
    response, cancelled = await read_with_its_table_locked_past(
        system, postgres, "lock_timeout", LOCK_TIMEOUT_MESSAGE, path, table
    )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "READ_STATEMENT_TIMEOUT", response.text
    assert "lock_timeout" in response.json()["error"]["message"], response.text
    assert response.headers.get("retry-after") == str(errors.READ_CANCELLED_RETRY_AFTER)
    assert cancelled == 1, "the read ran again after Postgres cancelled it"


@EACH_FAST_READ
async def test_a_fast_read_whose_backend_is_terminated_is_answered_once(
    system: System, postgres: EmbeddedPostgres, path: str, table: str
) -> None:
    """The list of jobs and a job's log wait on a lock another session holds; the operator
    terminates the read's backend (pg_terminate_backend): 503 READ_MODELS_UNAVAILABLE at once,
    the lock still held, and no other backend of the API's takes up the same read. Before: the
    fast path handed the error over to Litestar, which ran the read again on a new connection,
    and it waited on the lock again."""
    operator = await asyncpg.connect(postgres.url)
    read_text = f"%FROM {READ_SCHEMA}.{table}%"
    try:
        async with operator.transaction():
            await operator.execute(f"LOCK TABLE {READ_SCHEMA}.{table} IN ACCESS EXCLUSIVE MODE")
            client = system.client()
            async with client:
                reading = asyncio.ensure_future(client.get(path))
                [first] = await until_backends(
                    operator, query_like=read_text, waiting_on_a_lock=True, unless_ended=reading
                )
                assert await operator.fetchval("SELECT pg_terminate_backend($1)", first)
                # Until the answer comes or the same read waits on the lock again elsewhere.
                again: list[int] = []
                async with asyncio.timeout(30):  # a bound on a broken test only
                    while not reading.done():
                        waiting = await backends(
                            operator, query_like=read_text, waiting_on_a_lock=True
                        )
                        if again := [pid for pid in waiting if pid != first]:
                            break
                        await asyncio.sleep(0.02)  # Postgres's state: nothing to wait on
                if again:
                    reading.cancel()
                assert not again, "the read ran again after its backend was terminated"
                response = await reading
    finally:
        await operator.close()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "READ_MODELS_UNAVAILABLE", response.text
    async with system.client() as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text


# What Postgres logs of a connection it refused, every slot taken (SQLSTATE 53300).
TOO_MANY_CLIENTS_MESSAGE = "sorry, too many clients already"


async def take_every_slot(postgres: EmbeddedPostgres) -> list[asyncpg.Connection]:
    """Connections to ``postgres`` until it refuses one for want of slots: the reserved ones
    too (the test servers' user is a superuser)."""
    taken: list[asyncpg.Connection] = []
    while True:
        try:
            taken.append(await asyncpg.connect(postgres.url))
        except asyncpg.TooManyConnectionsError:
            return taken


@FEW_CONNECTIONS
@QUIET_GATE
async def test_a_fast_read_refused_a_connection_for_want_of_slots_asks_once(
    system: System, postgres: EmbeddedPostgres
) -> None:
    """Every connection slot of Postgres taken and the API's pooled connections ended: the
    list of jobs is answered 503 READ_MODELS_OVERLOADED, Postgres refusing the read's new
    connection once (too_many_connections). Before: the fast path handed the error over to
    Litestar, which asked Postgres for a connection again."""
    operator = await asyncpg.connect(postgres.url)
    pool = read_pool_of(system).pool
    status, _, _ = await read_job(system)  # the gate serving: no look of its own meanwhile
    assert status == 200
    taken = await take_every_slot(postgres)
    try:
        # The API's read connections ended, their slots taken by the test's in turn.
        pooled = pooled_connections(pool)
        pids = [conn.get_server_pid() for conn in pooled]
        for pid in pids:
            assert await operator.fetchval("SELECT pg_terminate_backend($1)", pid)
        for pid in pids:
            await until_no_backends(operator, pid=pid)
        taken += await take_every_slot(postgres)
        async with asyncio.timeout(30):  # a bound on a broken test only
            while not all(conn.is_closed() for conn in pooled):  # noqa: ASYNC110 - asyncpg's state
                await asyncio.sleep(0.02)  # the API's connections see their end: nothing to wait on
        before = await lines_logged(postgres, operator, TOO_MANY_CLIENTS_MESSAGE)
        async with system.client() as client:
            response = await client.get("/api/jobs")
        refused = await lines_logged(postgres, operator, TOO_MANY_CLIENTS_MESSAGE) - before
    finally:
        for conn in taken:
            await conn.close()
        await operator.close()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "READ_MODELS_OVERLOADED", response.text
    assert response.headers.get("retry-after") == str(errors.READ_OVERLOADED_RETRY_AFTER)
    assert refused == 1, "the read asked Postgres for a connection again after its refusal"
    async with system.client() as client:
        response = await client.get("/api/jobs")
    assert response.status_code == 200, response.text


async def health_with_its_table_locked_past(
    system: System, postgres: EmbeddedPostgres, setting: str, message: str
) -> tuple[dict[str, Any], int]:
    """``/health`` read while another session holds the projector's checkpoint table locked
    past the database's ``setting`` (300 ms) for health's connections: the report, and how
    many statements Postgres logged ``message`` of meanwhile."""
    operator = await asyncpg.connect(postgres.url)
    try:
        async with database_setting(operator, health_pool_of(system).pool, setting):
            before = await lines_logged(postgres, operator, message)
            async with operator.transaction():
                await operator.execute(
                    f"LOCK TABLE {READ_SCHEMA}.checkpoint IN ACCESS EXCLUSIVE MODE"
                )
                report = await health(system)
            cancelled = await lines_logged(postgres, operator, message) - before
    finally:
        await operator.close()
    return report, cancelled


@PATIENT_HEALTH
async def test_health_whose_read_postgres_cancels_says_so_not_that_postgres_is_away(
    system: System, postgres: EmbeddedPostgres
) -> None:
    """The projector's checkpoint table locked by another session past the database's
    lock_timeout (300 ms): /health is 503 POSTGRES_CANCELLED, its sentence naming the
    lock_timeout, not POSTGRES_UNREACHABLE: Postgres answered. Before: "This API instance
    cannot reach Postgres"."""
    report, cancelled = await health_with_its_table_locked_past(
        system, postgres, "lock_timeout", LOCK_TIMEOUT_MESSAGE
    )
    assert cancelled == 1, "health's read was not the one Postgres cancelled"
    assert report["http_status"] == 503, report
    assert "POSTGRES_UNREACHABLE" not in codes(report), report
    [problem] = [p for p in report["problems"] if p["code"] == "POSTGRES_CANCELLED"]
    assert "lock_timeout" in problem["message"], report
    assert report["postgres"] is False, report


@PATIENT_HEALTH
async def test_health_whose_read_outlasts_postgres_statement_timeout_says_so(
    system: System, postgres: EmbeddedPostgres
) -> None:
    """The database's statement_timeout (300 ms, below health's own bound, 5 s here) ends health's
    read of the locked checkpoint table: /health is 503 POSTGRES_CANCELLED, its sentence naming
    the statement_timeout; neither POSTGRES_UNREACHABLE nor POSTGRES_TIMEOUT (Postgres answered,
    before health's bound)."""
    assert system.settings.health_postgres_timeout_seconds == 5.0
    report, cancelled = await health_with_its_table_locked_past(
        system, postgres, "statement_timeout", STATEMENT_TIMEOUT_MESSAGE
    )
    assert cancelled == 1, "health's read was not the one Postgres cancelled"
    assert report["http_status"] == 503, report
    assert {"POSTGRES_UNREACHABLE", "POSTGRES_TIMEOUT"} & set(codes(report)) == set(), report
    [problem] = [p for p in report["problems"] if p["code"] == "POSTGRES_CANCELLED"]
    assert "statement_timeout" in problem["message"], report
    assert "lock_timeout" not in problem["message"], report
    assert report["postgres"] is False, report
