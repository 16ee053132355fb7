"""The read pool's connection (``TimedConnection``) on a Postgres speaking German: a statement
Postgres cancels carries how long it ran and its session's statement_timeout, asked right after
the cancel, so that the timeout is told from an operator's cancel without Postgres's English
message (``postgresconnect.statement_timed_out``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from jobrunner.common import postgresconnect
from jobrunner.common.timedconnection import TimedConnection
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api.context import read_pool
from tests.tools.backend_activity import until_backends
from tests.tools.translated_postgres import GERMAN, postgres_speaking

# What the statements below wait on: long enough that only a cancel ends them.
SLEEP = "SELECT pg_sleep(60)"


@pytest.fixture(scope="module")
async def german_postgres(compiled_locales: Path) -> AsyncIterator[EmbeddedPostgres]:
    async with postgres_speaking(GERMAN, "jobrunner-test-timed-", compiled_locales) as server:
        yield server


@pytest.fixture
async def conn(german_postgres: EmbeddedPostgres) -> AsyncIterator[TimedConnection]:
    connection = await asyncpg.connect(german_postgres.url, connection_class=TimedConnection)
    try:
        yield connection
    finally:
        await connection.close()


async def _new_sessions_statement_timeout(server: EmbeddedPostgres) -> str:
    """The statement_timeout a session opened now starts with (``SHOW``'s text)."""
    fresh = await asyncpg.connect(server.url)
    try:
        shown: str = await fresh.fetchval("SHOW statement_timeout")
    finally:
        await fresh.close()
    return shown


async def _cancelled(statement: asyncio.Future[object]) -> asyncpg.QueryCanceledError:
    with pytest.raises(asyncpg.QueryCanceledError) as raised:
        await statement
    return raised.value


async def test_a_statement_past_its_timeout_is_told_as_the_timeout_in_german(
    conn: TimedConnection,
) -> None:
    """The session's statement_timeout, set after the connect (as a reload of the server's
    configuration would), is the one the cancel is measured against: the statement ran at least
    that long, so it is the timeout's, though Postgres said so in German."""
    await conn.execute("SET statement_timeout = '200ms'")
    error = await _cancelled(asyncio.ensure_future(conn.fetchval(SLEEP)))
    assert postgresconnect.said_timed_out(error) is None, error.args  # not English
    run = postgresconnect.run_of(error)
    assert run is not None
    assert run.statement_timeout == pytest.approx(0.2)
    assert run.seconds >= 0.2
    assert postgresconnect.statement_timed_out(error)
    assert await conn.fetchval("SELECT 1") == 1  # the session lives on


async def test_an_operators_cancel_before_the_timeout_is_told_as_a_cancel_in_german(
    conn: TimedConnection, german_postgres: EmbeddedPostgres
) -> None:
    """Under a statement_timeout of an hour, the operator's pg_cancel_backend ends the statement
    long before: an operator's cancel, though Postgres said so in German."""
    await conn.execute("SET statement_timeout = '1h'")
    operator = await asyncpg.connect(german_postgres.url)
    try:
        sleeping = asyncio.ensure_future(conn.execute(SLEEP))
        [pid] = await until_backends(operator, query_like=SLEEP, active=True, unless_ended=sleeping)
        assert await operator.fetchval("SELECT pg_cancel_backend($1)", pid)
        error = await _cancelled(sleeping)
    finally:
        await operator.close()
    run = postgresconnect.run_of(error)
    assert run is not None
    assert run.statement_timeout == 3600
    assert not postgresconnect.statement_timed_out(error)


async def test_a_cancel_postgres_names_in_english_is_not_asked_about(
    conn: TimedConnection,
) -> None:
    """A session whose messages are English (lc_messages set back to C for it, as a superuser
    may): Postgres's message says which cancel it was, and no question is sent after it."""
    await conn.execute("SET lc_messages = 'C'")
    await conn.execute("SET statement_timeout = '200ms'")
    error = await _cancelled(asyncio.ensure_future(conn.fetchval(SLEEP)))
    assert postgresconnect.run_of(error) is None
    assert postgresconnect.statement_timed_out(error)


async def test_a_timeout_inside_a_transaction_is_told_as_the_timeout_in_german(
    german_postgres: EmbeddedPostgres,
) -> None:
    """The database's statement_timeout (200 ms) cancels a read pool's statement inside a
    transaction: the cancel aborted the transaction, so the session's timeout cannot be asked
    after it; the one the connection learnt when it was opened tells it as the timeout's, in
    German too. Before: READ_CANCELLED's (the timeout not known)."""
    database = german_postgres.database
    operator = await asyncpg.connect(german_postgres.url)
    try:
        await operator.execute(f"ALTER DATABASE \"{database}\" SET statement_timeout = '200ms'")
        reads = await read_pool(german_postgres.url, deadline_seconds=30)
        try:
            async with reads.pool.acquire() as conn, conn.transaction():
                error = await _cancelled(asyncio.ensure_future(conn.fetchval(SLEEP)))
        finally:
            await reads.pool.close()
    finally:
        await operator.execute(f'ALTER DATABASE "{database}" RESET statement_timeout')
        await operator.close()
    assert postgresconnect.said_timed_out(error) is None, error.args  # not English
    run = postgresconnect.run_of(error)
    assert run is not None
    assert run.statement_timeout == pytest.approx(0.2)
    assert postgresconnect.statement_timed_out(error)


async def test_a_timeout_not_known_inside_a_transaction_is_told_as_a_cancel_in_german(
    conn: TimedConnection,
) -> None:
    """A connection that never learnt its session's timeout (opened outside the read pool),
    its statement cancelled inside a transaction: the timeout cannot be asked after the cancel,
    so the cancel is told as an operator's, the answer that blames no setting."""
    await conn.execute("SET statement_timeout = '200ms'")
    async with conn.transaction():
        error = await _cancelled(asyncio.ensure_future(conn.fetchval(SLEEP)))
    run = postgresconnect.run_of(error)
    assert run is not None
    assert run.statement_timeout is None
    assert not postgresconnect.statement_timed_out(error)


async def test_an_operators_cancel_in_a_call_of_several_statements_is_told_as_a_cancel(
    conn: TimedConnection, german_postgres: EmbeddedPostgres
) -> None:
    """One execute() of three statements under a statement_timeout of 500 ms, which Postgres
    applies to each: two of 300 ms, then one waiting on a lock the operator holds, which the
    operator cancels. The call ran past the timeout, its statements did not: an operator's
    cancel (no run recorded for a call of several statements). Before: told as the timeout's."""
    await conn.execute("SET statement_timeout = '500ms'")
    operator = await asyncpg.connect(german_postgres.url)
    try:
        await operator.execute("SELECT pg_advisory_lock(7)")
        calling = asyncio.ensure_future(
            conn.execute("SELECT pg_sleep(0.3); SELECT pg_sleep(0.3); SELECT pg_advisory_lock(7)")
        )
        [pid] = await until_backends(
            operator,
            query_like="%pg_advisory_lock(7)%",
            waiting_on_a_lock=True,
            unless_ended=calling,
        )
        assert await operator.fetchval("SELECT pg_cancel_backend($1)", pid)
        error = await _cancelled(calling)
    finally:
        await operator.close()
    assert postgresconnect.said_timed_out(error) is None, error.args  # not English
    assert postgresconnect.run_of(error) is None
    assert not postgresconnect.statement_timed_out(error)


async def test_a_timeout_lowered_by_a_reload_is_relearnt_after_a_cancel_in_a_transaction(
    german_postgres: EmbeddedPostgres,
) -> None:
    """The server's statement_timeout is an hour when the read pool's connection opens, then
    an operator lowers it to 200 ms and reloads the configuration (ALTER SYSTEM, pg_reload_conf:
    it reaches live sessions). A statement inside a transaction is cancelled at 200 ms: the
    timeout cannot be asked inside the aborted transaction and the connection knows only the
    hour, so this first cancel is told as an operator's; the connection asks again before its
    next statement outside a transaction, and the next such cancel is told as the timeout's.
    Before: every such cancel on that connection was told as an operator's for its whole
    life."""
    superuser = await asyncpg.connect(german_postgres.url)
    try:
        await superuser.execute("ALTER SYSTEM SET statement_timeout = '1h'")
        await superuser.fetchval("SELECT pg_reload_conf()")
        reads = await read_pool(german_postgres.url, deadline_seconds=30)
        try:
            async with reads.pool.acquire() as conn:
                assert conn._con.known_statement_timeout == 3600
                await superuser.execute("ALTER SYSTEM SET statement_timeout = '200ms'")
                await superuser.fetchval("SELECT pg_reload_conf()")
                # The reload reached the session (a backend reads it between two commands).
                async with asyncio.timeout(30):  # a bound on a broken test only
                    while await conn.fetchval("SHOW statement_timeout") != "200ms":  # noqa: ASYNC110 - the backend's state
                        await asyncio.sleep(0.02)  # the backend's reload: nothing to wait on
                cancels = []
                for _ in range(2):
                    async with conn.transaction():
                        cancels.append(
                            await _cancelled(asyncio.ensure_future(conn.fetchval(SLEEP)))
                        )
        finally:
            await reads.pool.close()
    finally:
        await superuser.execute("ALTER SYSTEM RESET statement_timeout")
        await superuser.fetchval("SELECT pg_reload_conf()")
        await superuser.close()
        # The module's server is shared: the next test's sessions must not take the 200 ms.
        async with asyncio.timeout(30):  # a bound on a broken test only
            while await _new_sessions_statement_timeout(german_postgres) != "0":  # noqa: ASYNC110 - the server's state
                await asyncio.sleep(0.02)  # the postmaster's reload: nothing to wait on
    second = cancels[1]
    assert postgresconnect.said_timed_out(second) is None, second.args  # not English
    assert [postgresconnect.statement_timed_out(error) for error in cancels] == [False, True]
    run = postgresconnect.run_of(second)
    assert run is not None
    assert run.statement_timeout == pytest.approx(0.2)


# The re-ask of a stale statement_timeout (``STATEMENT_TIMEOUT_QUERY``) made to wait on an
# advisory lock: pg_settings shadowed, on the session's search_path, by a view that takes the
# lock first (a transaction's, released with the statement).
SHADOW_SCHEMA = "shadowed_settings"
REASK_LOCK = 9


async def shadow_pg_settings(operator: asyncpg.Connection) -> None:
    await operator.execute(f"CREATE SCHEMA {SHADOW_SCHEMA}")
    await operator.execute(
        f"CREATE FUNCTION {SHADOW_SCHEMA}.after_lock() RETURNS boolean LANGUAGE plpgsql AS $$ "
        f"BEGIN PERFORM pg_advisory_xact_lock_shared({REASK_LOCK}); RETURN true; END $$"
    )
    await operator.execute(
        f"CREATE VIEW {SHADOW_SCHEMA}.pg_settings AS SELECT name, setting "
        f"FROM pg_catalog.pg_settings WHERE {SHADOW_SCHEMA}.after_lock()"
    )


@pytest.mark.parametrize("interruption", ["operator_cancel", "task_cancelled"])
async def test_a_stale_timeout_whose_question_fails_is_asked_again_before_the_next_statement(
    conn: TimedConnection, german_postgres: EmbeddedPostgres, interruption: str
) -> None:
    """The session's statement_timeout lowered after the connection learnt it, and a statement
    cancelled inside a transaction: the connection is to ask the timeout again. That question
    fails (an operator cancels it) or its caller is cancelled meanwhile: the connection still
    asks before its next statement, and the next cancel in a transaction is told as the
    timeout's. Before: the flag was cleared before the question, so a failed one left the
    stale timeout for the connection's life, every such cancel told as an operator's."""
    operator = await asyncpg.connect(german_postgres.url)
    try:
        await shadow_pg_settings(operator)
        await conn.execute(f"SET search_path = {SHADOW_SCHEMA}, pg_catalog")
        await conn.learn_statement_timeout()
        assert conn.known_statement_timeout == 0
        await conn.execute("SET statement_timeout = '200ms'")
        async with conn.transaction():
            first = await _cancelled(asyncio.ensure_future(conn.fetchval(SLEEP)))
        assert conn.statement_timeout_stale
        await operator.execute(f"SELECT pg_advisory_lock({REASK_LOCK})")
        reading = asyncio.ensure_future(conn.fetchval("SELECT 1"))
        [pid] = await until_backends(
            operator, query_like="%pg_settings%", waiting_on_a_lock=True, unless_ended=reading
        )
        if interruption == "operator_cancel":
            assert await operator.fetchval("SELECT pg_cancel_backend($1)", pid)
            assert await reading == 1  # the statement runs all the same
        else:
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
        assert conn.statement_timeout_stale, "a failed question cleared the flag"
        await operator.execute(f"SELECT pg_advisory_unlock({REASK_LOCK})")
        async with conn.transaction():
            second = await _cancelled(asyncio.ensure_future(conn.fetchval(SLEEP)))
    finally:
        await operator.execute(f"DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE")
        await operator.close()
    assert [postgresconnect.statement_timed_out(error) for error in (first, second)] == [
        False,
        True,
    ]
