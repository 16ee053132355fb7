"""The API's Postgres pool (``context.read_pool``): no reset query on release, one plan per
query's values, and still no state carried from one request to the next."""

from __future__ import annotations

from jobrunner.common.settings import Settings
from jobrunner.services.api.context import read_pool


async def test_a_transaction_left_open_does_not_reach_the_next_request(settings: Settings) -> None:
    """A connection released inside a transaction comes back out of it, its writes undone."""
    pool = await read_pool(settings.database_url, 60.0)
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS leftover (n int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO leftover VALUES (1)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM leftover") == 0
    finally:
        await pool.close()


async def test_every_query_is_planned_for_its_own_values(settings: Settings) -> None:
    """The sessions never fall back to a generic plan (the search index needs the pattern)."""
    pool = await read_pool(settings.database_url, 60.0)
    try:
        assert await pool.fetchval("SHOW plan_cache_mode") == "force_custom_plan"
    finally:
        await pool.close()
