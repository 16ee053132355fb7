"""A projector's COPY (a batch of lines) whose connection ends while it waits for the socket to
drain, more written than Postgres has read, ends with the connection's loss: it used to wait for
ever (asyncpg never wakes that wait when the connection is lost), and with it a replay or the
projector. The backend is terminated (``pg_terminate_backend``), or the connection ended by its
owner (``terminate``: a replay's liveness watch does that to a frozen Postgres)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobrunner.common.postgrescopy import copy_records
from jobrunner.common.settings import Settings

pytestmark = pytest.mark.timeout(120)

# Far more than a socket takes while nobody reads it (loopback: a COPY of 5-6 MB already waits).
ROWS = 30_000
TEXT = "x" * 1000
# How long the test waits for the COPY to end once its connection has: well past a round trip.
PATIENCE = 20.0


@pytest.fixture
async def table_locked(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A table whose writes wait: another session holds it locked (reads pass)."""
    holder = await asyncpg.connect(settings.database_url)
    try:
        await holder.execute("CREATE TABLE copied (n int, text text)")
        async with holder.transaction():
            await holder.execute("LOCK TABLE copied IN EXCLUSIVE MODE")
            yield holder
    finally:
        await holder.close()


async def _copy_waiting(
    settings: Settings, holder: asyncpg.Connection
) -> tuple[asyncpg.Connection, asyncio.Task[None]]:
    """A connection whose COPY of 30 MB waits on the lock, with what it wrote unread."""
    conn = await asyncpg.connect(settings.database_url)
    copying = asyncio.create_task(
        copy_records(
            conn,
            "copied",
            schema_name="public",
            columns=("n", "text"),
            records=((n, TEXT) for n in range(ROWS)),
        )
    )
    async with asyncio.timeout(60):
        while not await holder.fetchval(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND pid = $1)",
            conn.get_server_pid(),
        ):
            assert not copying.done(), copying
            await asyncio.sleep(0.02)  # Postgres state: nothing to wait on
    return conn, copying


@pytest.mark.parametrize("ended_by", ["pg_terminate_backend", "its owner"])
async def test_a_copy_whose_connection_ends_while_it_waits_to_write_ends(
    settings: Settings, table_locked: asyncpg.Connection, ended_by: str
) -> None:
    """The COPY ends with ConnectionDoesNotExistError, as a statement whose connection was lost
    does; it waited for ever."""
    conn, copying = await _copy_waiting(settings, table_locked)
    try:
        if ended_by == "pg_terminate_backend":
            assert await table_locked.fetchval(
                "SELECT pg_terminate_backend($1, 10000)", conn.get_server_pid()
            )
        else:
            conn.terminate()
        done, _ = await asyncio.wait({copying}, timeout=PATIENCE)
        assert done, "the COPY still waits with its connection gone"
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            copying.result()
    finally:
        copying.cancel()
        conn.terminate()


async def test_a_copy_cancelled_while_it_waits_to_write_is_cancelled(
    settings: Settings, table_locked: asyncpg.Connection
) -> None:
    """Its caller cancelled (a projector's stop), the COPY is cancelled with it, its connection
    left as it is (the stop's own grace decides)."""
    conn, copying = await _copy_waiting(settings, table_locked)
    try:
        copying.cancel()
        done, _ = await asyncio.wait({copying}, timeout=PATIENCE)
        assert done, "the COPY goes on after its caller's cancel"
        assert copying.cancelled()
    finally:
        conn.terminate()
