"""A rebuild judged abandoned stops being called so once another projector holds its lock,
whatever requests come between the gate's watch and its looks: a request's look (which does not
read the lock) began after the watch asked used to stand in for the watch's, and the watch never
read the lock again, so REBUILD_ABANDONED stayed while a resumed projector rebuilt."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from nats.js import JetStreamContext

from jobrunner.common.readmodelversion import REBUILD_LOCK, UPGRADE_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.api import readmodelgate
from jobrunner.services.api.context import read_pool

pytestmark = pytest.mark.timeout(120)

ROUNDS = 3


async def test_a_resumed_rebuild_is_no_longer_called_abandoned_between_requests(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Judged at once: the gap and limit are what this test is not about.
    monkeypatch.setattr(readmodelgate, "REBUILD_RETRY_GAP_SECONDS", 0.0)
    admin = await asyncpg.connect(settings.database_url)
    rebuilder = await asyncpg.connect(settings.database_url)
    pool = await read_pool(settings.database_url, 60.0)
    gate = readmodelgate.ReadModelGate(pool, js, Names(settings.prefix), 0.0)
    try:
        # A rebuild begun (its own checkpoint) and left by its projector: nobody holds its lock.
        await admin.execute(
            f"CREATE SCHEMA {UPGRADE_SCHEMA}; CREATE TABLE {UPGRADE_SCHEMA}.checkpoint "
            "(id int PRIMARY KEY, last_seq bigint NOT NULL); "
            f"INSERT INTO {UPGRADE_SCHEMA}.checkpoint VALUES (1, 500)"
        )
        await gate.check(read_lock=True)
        await asyncio.sleep(0.05)
        await gate.check(read_lock=True)
        assert gate.reason(gate.state)[0] == "REBUILD_ABANDONED"

        # Another projector resumes it.
        await rebuilder.execute("SELECT pg_advisory_lock($1)", REBUILD_LOCK)
        for _ in range(ROUNDS):
            # Two requests, the second waiting behind the first's look, then the watch's look
            # asked: the second request's look begins after the watch asked.
            first = asyncio.create_task(gate.check())
            while not gate._lock.locked():  # noqa: ASYNC110 - the first look under way
                await asyncio.sleep(0)
            second = asyncio.create_task(gate.check())
            await asyncio.sleep(0)
            watch = asyncio.create_task(gate.check(read_lock=True))
            await asyncio.gather(first, second, watch)
        assert gate.reason(gate.state)[0] != "REBUILD_ABANDONED", gate.abandoned
    finally:
        await gate.close()
        await pool.close()
        await rebuilder.close()
        await admin.close()
