"""How far a read-model rebuild has come, as a test waits for it."""

from __future__ import annotations

import asyncio

import asyncpg

from jobrunner.common.readmodelversion import UPGRADE_SCHEMA


async def rebuild_begun(url: str) -> None:
    """Until the rebuild has loaded events into its schema (its checkpoint moved)."""
    conn = await asyncpg.connect(url)
    try:
        async with asyncio.timeout(60):
            while not (  # noqa: ASYNC110 (nothing to wait on but Postgres)
                await conn.fetchval(
                    "SELECT to_regclass($1) IS NOT NULL", f"{UPGRADE_SCHEMA}.checkpoint"
                )
                and await conn.fetchval(
                    f"SELECT last_seq > 0 FROM {UPGRADE_SCHEMA}.checkpoint WHERE id = 1"
                )
            ):
                await asyncio.sleep(0.02)
    finally:
        await conn.close()
