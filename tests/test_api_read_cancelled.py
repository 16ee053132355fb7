"""A read of the API's that Postgres cancels (an operator's ``pg_cancel_backend``, a
``statement_timeout``): Postgres answered, it is not away. The client is told its read was
cancelled (503 READ_CANCELLED or READ_STATEMENT_TIMEOUT, with Retry-After), never "cannot be
reached" (READ_MODELS_UNAVAILABLE), and the pooled connection serves the next read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest

from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api import errors
from tests.history_support import job_events, publish, reading_system, wait_projected
from tests.system import System
from tests.tools.api_parts import read_pool_of


@pytest.fixture
async def system(settings: Settings, own_postgres: EmbeddedPostgres) -> AsyncIterator[System]:
    settings = msgspec.structs.replace(settings, database_url=own_postgres.url)
    async with reading_system(settings) as running:
        await wait_projected(settings, await publish(settings, job_events("before")))
        yield running


async def read_job(system: System) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with system.client() as client:
        response = await client.get("/api/jobs/before")
    return response.status_code, dict(response.headers), response.json()


async def backends_waiting_on_a_lock(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> $1",
        await conn.fetchval("SELECT pg_backend_pid()"),
    )
    return [row["pid"] for row in rows]


async def test_a_read_cancelled_by_the_operator_is_told_as_cancelled_and_the_pool_serves_on(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """A read waits on a lock another session holds on the jobs' table; the operator cancels
    it (pg_cancel_backend). Before the fix: 503 READ_MODELS_UNAVAILABLE, "cannot be reached
    just now", with Postgres answering all along."""
    operator = await asyncpg.connect(own_postgres.url)
    try:
        locker = operator.transaction()
        await locker.start()
        await operator.execute(f"LOCK TABLE {READ_SCHEMA}.jobs IN ACCESS EXCLUSIVE MODE")
        reading = asyncio.ensure_future(read_job(system))
        waiting: list[int] = []
        async with asyncio.timeout(30):  # a bound on a broken test only
            while not (waiting := await backends_waiting_on_a_lock(operator)):  # noqa: ASYNC110 (Postgres state)
                await asyncio.sleep(0.02)
        [cancelled] = waiting
        assert await operator.fetchval("SELECT pg_cancel_backend($1)", cancelled)
        status, headers, body = await reading
        await locker.rollback()
        assert status == 503, body
        assert body["error"]["code"] == "READ_CANCELLED", body
        assert "cancelled" in body["error"]["message"], body
        assert headers.get("retry-after") == str(errors.READ_CANCELLED_RETRY_AFTER), headers
        # The connection whose statement was cancelled is alive and serves the next read.
        alive = await operator.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", cancelled
        )
        assert alive == 1, "the cancelled read's connection was ended"
    finally:
        await operator.close()
    status, _, body = await read_job(system)
    assert status == 200, body
    pool = read_pool_of(system).pool
    assert pool.get_idle_size() == pool.get_size()


async def test_a_read_past_postgres_statement_timeout_is_told_as_too_long(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """The database's statement_timeout (set by its operator, 300 ms here) ends a read that
    waits on a lock: 503 READ_STATEMENT_TIMEOUT, the read took too long; not "cannot be
    reached". Before the fix: 503 READ_MODELS_UNAVAILABLE."""
    operator = await asyncpg.connect(own_postgres.url)
    database = await operator.fetchval("SELECT current_database()")
    pool = read_pool_of(system).pool
    try:
        await operator.execute(f'ALTER DATABASE "{database}" SET statement_timeout = 300')
        await pool.expire_connections()  # the API's next connections take the database's setting
        async with operator.transaction():
            await operator.execute(f"LOCK TABLE {READ_SCHEMA}.jobs IN ACCESS EXCLUSIVE MODE")
            status, headers, body = await read_job(system)
        assert status == 503, body
        assert body["error"]["code"] == "READ_STATEMENT_TIMEOUT", body
        assert "statement_timeout" in body["error"]["message"], body
        assert headers.get("retry-after") == str(errors.READ_CANCELLED_RETRY_AFTER), headers
        status, _, body = await read_job(system)
        assert status == 200, body
    finally:
        await operator.execute(f'ALTER DATABASE "{database}" RESET statement_timeout')
        await operator.close()
        await pool.expire_connections()
