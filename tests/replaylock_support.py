"""Ending the session that holds the replay lock, before and during a replay's or a rebuild's
swap (jobrunner/services/projector/replaylock.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from jobrunner.common.settings import Settings
from jobrunner.services.projector.replay import PREVIOUS_SCHEMA
from jobrunner.services.projector.replaylock import REPLAY_LOCK


async def terminate_lock_holder(settings: Settings) -> None:
    """Ends the session holding the replay lock, as an idle timeout or a proxy would."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        ended = await conn.fetchval(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory' "
            "AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1",
            REPLAY_LOCK,
        )
    finally:
        await conn.close()
    assert ended


@contextlib.asynccontextmanager
async def swap_held_after_its_check(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """Holds up a swap just after its lock check: a table in ``PREVIOUS_SCHEMA``, which the swap
    drops first thing after the check, kept in use in an open transaction until the block ends.
    Yields that connection (``wait_for_the_swap`` tells when the swap waits on it)."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {PREVIOUS_SCHEMA}")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {PREVIOUS_SCHEMA}.in_use (n int)")
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {PREVIOUS_SCHEMA}.in_use IN ACCESS SHARE MODE")
            yield conn
    finally:
        await conn.close()


async def wait_for_the_swap(
    holder: asyncpg.Connection, swapping: asyncio.Future[Any], timeout: float = 120.0
) -> None:
    """Until a session waits for the table ``swap_held_after_its_check`` keeps in use; raises
    what ``swapping`` (the replay or rebuild) raised should it end first."""
    async with asyncio.timeout(timeout):
        while not await holder.fetchval(
            "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND relation = $1::regclass)",
            f"{PREVIOUS_SCHEMA}.in_use",
        ):
            if swapping.done():
                swapping.result()
                raise AssertionError("it ended without waiting for the table in use")
            await asyncio.sleep(0.05)  # nothing to wait on but pg_locks
