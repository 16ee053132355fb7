"""The pool a long work loads with (`jobrunner replay`, the read models' rebuild) on a Postgres
whose operator set an ``idle_session_timeout``: a pooled connection idle between two batches
(or through the loading, beside its busy sibling) is not ended by the server, as the work's lock
holder and probe already were not."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector.workpool import open_work_pool

# The server's idle_session_timeout in this test, and how long a connection then waits idle:
# well past it, so that a server that applies it has ended the session.
SERVER_IDLE_TIMEOUT_MS = 200
IDLE_SECONDS = 1.0


@pytest.fixture
async def impatient_postgres(own_postgres: EmbeddedPostgres) -> EmbeddedPostgres:
    """``own_postgres`` whose database ends every session idle for 200 ms."""
    admin = await asyncpg.connect(own_postgres.url)
    try:
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(
            f'ALTER DATABASE "{database}" SET idle_session_timeout = {SERVER_IDLE_TIMEOUT_MS}'
        )
    finally:
        await admin.close()
    return own_postgres


async def test_the_servers_idle_session_timeout_does_not_end_an_idle_pooled_connection(
    impatient_postgres: EmbeddedPostgres,
) -> None:
    """Before the fix the server ended the idle connection: asyncpg's pool opened another one
    (another backend) at the next acquire, or the next statement met IdleSessionTimeoutError."""
    # The timeout applies on this server: a plain session is ended.
    plain = await asyncpg.connect(impatient_postgres.url)
    await asyncio.sleep(IDLE_SECONDS)
    with pytest.raises((asyncpg.exceptions.IdleSessionTimeoutError, asyncpg.InterfaceError)):
        await plain.fetchval("SELECT 1")
    plain.terminate()

    pool = await open_work_pool(impatient_postgres.url, size=2)
    try:
        async with pool.acquire() as conn:
            before = await conn.fetchval("SELECT pg_backend_pid()")
        await asyncio.sleep(IDLE_SECONDS)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == before, "session ended"
            assert await conn.fetchval("SHOW idle_session_timeout") == "0"
    finally:
        await pool.close()
