"""A live stream's look-up that Postgres cancels (an operator's ``pg_cancel_backend``) or fails
with another error that may pass (an operator's intervention, a deadlock, resources short, a
lock_timeout: by SQLSTATE class) is a read that failed just now: the stream goes on from the
events (``failed``), and once the pause is over its probe answers again on the same
connection. Before: a bare OperatorInterventionError (SQLSTATE 57000) and the others were no
UNREADABLE and ended the stream (as a SQLSTATE asyncpg has no class for still does: README).
Real Postgres (the test's own); the gate is told the version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api.context import read_pool
from jobrunner.services.api.readpool import ReadPool
from jobrunner.services.api.streamlookups import UNREADABLE, StreamLookups, StreamReadsAway
from tests.tools.api_parts import serving_gate
from tests.tools.backend_activity import until_backends

pytestmark = pytest.mark.timeout(60)

BOUND = 60.0  # no look-up here waits for its bound
# Long enough that the probe right after the failure is within it; the test ends it itself.
PAUSE = 600.0
SLEEP = "SELECT pg_sleep(60)"


@pytest.fixture
async def pool(own_postgres: EmbeddedPostgres) -> AsyncIterator[ReadPool]:
    pool = await read_pool(own_postgres.url, BOUND)
    try:
        yield pool
    finally:
        await pool.pool.close()


@pytest.fixture
async def operator(own_postgres: EmbeddedPostgres) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(own_postgres.url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def failing_function(operator: asyncpg.Connection) -> AsyncIterator[None]:
    """``fail_with(code)``: a function that raises an error of SQLSTATE ``code``."""
    await operator.execute(
        "CREATE FUNCTION fail_with(code text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'staged' USING ERRCODE = code; END $$"
    )
    try:
        yield
    finally:
        await operator.execute("DROP FUNCTION fail_with(text)")


async def assert_the_stream_reads_again_after_the_pause(
    lookups: StreamLookups, away: StreamReadsAway, backend: int
) -> None:
    assert lookups.failed, "the stream was not told its read failed"
    assert not await lookups.probe(), "a probe was made within the pause"
    away.until = 0.0  # the pause is over
    assert await lookups.probe(), "the probe failed after the pause"
    assert not lookups.failed
    assert await lookups.fetchval("SELECT pg_backend_pid()") == backend, "connection ended"


async def test_a_look_up_the_operator_cancels_is_a_read_failed_just_now(
    pool: ReadPool, operator: asyncpg.Connection
) -> None:
    away = StreamReadsAway()
    lookups = StreamLookups(pool, serving_gate(), BOUND, pause=PAUSE, away=away)
    backend = await lookups.fetchval("SELECT pg_backend_pid()")
    sleeping = asyncio.ensure_future(lookups.fetchval(SLEEP))
    await until_backends(operator, query_like=SLEEP, unless_ended=sleeping)
    assert await operator.fetchval("SELECT pg_cancel_backend($1)", backend)
    with pytest.raises(UNREADABLE) as failure:
        await sleeping
    assert isinstance(failure.value, asyncpg.QueryCanceledError), repr(failure.value)
    await assert_the_stream_reads_again_after_the_pause(lookups, away, backend)


@pytest.mark.parametrize(
    "sqlstate",
    [
        "57000",  # a bare OperatorInterventionError
        "40P01",  # a deadlock
        "40001",  # a serialization failure
        "53200",  # out of memory
        "55P03",  # lock_not_available: an operator's lock_timeout
        "57P99",  # class 57 of a code asyncpg does not know (UnknownPostgresError): it ended
        # the stream
    ],
)
async def test_a_look_up_failing_in_postgres_for_now_is_a_read_failed_just_now(
    pool: ReadPool, failing_function: None, sqlstate: str
) -> None:
    away = StreamReadsAway()
    lookups = StreamLookups(pool, serving_gate(), BOUND, pause=PAUSE, away=away)
    backend = await lookups.fetchval("SELECT pg_backend_pid()")
    with pytest.raises(UNREADABLE) as failure:
        await lookups.fetchval("SELECT fail_with($1)", sqlstate)
    assert failure.value.sqlstate == sqlstate  # type: ignore[attr-defined]
    await assert_the_stream_reads_again_after_the_pause(lookups, away, backend)


async def test_a_look_up_failing_with_an_unknown_code_of_no_passing_class_is_raised_as_it_is(
    pool: ReadPool, failing_function: None
) -> None:
    """A SQLSTATE asyncpg does not know, of a class that does not pass (22: data exception):
    not a read failed just now, but the error itself (the stream ends: a bug, not an outage)."""
    away = StreamReadsAway()
    lookups = StreamLookups(pool, serving_gate(), BOUND, pause=PAUSE, away=away)
    with pytest.raises(asyncpg.exceptions.UnknownPostgresError) as failure:
        await lookups.fetchval("SELECT fail_with('22P99')")
    assert not isinstance(failure.value, UNREADABLE), repr(failure.value)
    assert failure.value.sqlstate == "22P99"
    assert not lookups.failed
    assert away.until == 0.0, "a pause began"
