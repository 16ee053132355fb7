"""A test's Postgres killed outright (``EmbeddedPostgres.kill``, as a crash would) starts again
at once, whatever its backends were doing: each backend leads a process group of its own, so a
kill of the postmaster's group alone left a backend busy with a long statement (the projector's
COPY of lines) running on, and the next start met its shared memory ("pre-existing shared
memory block ... is still in use": ``ServerStartError: postgres did not start``)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import pytest

from jobrunner.embedded.postgres import EmbeddedPostgres

pytestmark = pytest.mark.timeout(120)

# Seconds of work for one backend, far longer than a kill and a start take.
LONG_STATEMENT = "SELECT count(*) FROM generate_series(1, 2000000000)"


async def until_running(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with asyncio.timeout(30):
            while not await conn.fetchval(  # noqa: ASYNC110 (nothing to wait on but Postgres)
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                statement,
            ):
                await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def test_postgres_killed_while_a_backend_is_busy_starts_again(
    own_postgres: EmbeddedPostgres,
) -> None:
    """Killed while a backend runs a long statement, Postgres starts again on the same data
    directory and answers."""
    busy = await asyncpg.connect(own_postgres.url)
    working = asyncio.create_task(busy.fetchval(LONG_STATEMENT))
    try:
        await until_running(own_postgres.url, LONG_STATEMENT)
        await asyncio.to_thread(own_postgres.kill)
        await asyncio.to_thread(own_postgres.start)
        conn = await asyncpg.connect(own_postgres.url)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        working.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await working
        busy.terminate()
