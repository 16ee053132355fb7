"""The tests' wait for a backend that waits on a lock (tests/tools/backend_activity.py), asked
on the connection that holds the lock in an open transaction, as several tests do."""

from __future__ import annotations

import asyncio

import asyncpg

from jobrunner.common.settings import Settings
from tests.tools.backend_activity import backends, until_backends

READ = "SELECT count(*) FROM held"


async def test_a_read_that_waits_after_the_transactions_first_look_is_seen(
    settings: Settings,
) -> None:
    """The holder looks at pg_stat_activity in its transaction before the read connects and
    waits: the wait still finds the read (Postgres keeps the transaction's first look; polled
    on the holder without clearing it, the read never showed and the test ran out its bound:
    b3126bb's flake)."""
    holder = await asyncpg.connect(settings.database_url)
    reader: asyncpg.Connection | None = None
    try:
        await holder.execute("CREATE TABLE held (n int)")
        async with holder.transaction():
            await holder.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
            assert await holder.fetch("SELECT pid FROM pg_stat_activity")  # the first look
            reader = await asyncpg.connect(settings.database_url)
            reading = asyncio.ensure_future(reader.fetchval(READ))
            [waiting] = await until_backends(
                holder, query_like=READ, waiting_on_a_lock=True, unless_ended=reading
            )
            assert waiting == reader.get_server_pid()
        assert await reading == 0
        assert await backends(holder, waiting_on_a_lock=True) == []
    finally:
        if reader is not None:
            await reader.close()
        await holder.close()
