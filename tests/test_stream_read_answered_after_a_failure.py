"""A live stream's read that began before another read failed and answered after it does not
tell its stream that reads answer again: the failure is newer than what the answer shows. (Before:
any read that answered cleared the stream's ``failed``, so a probe under way as a look-up failed
had the stream send ``resync`` at once, while the API's streams were just taking Postgres as away.)
Real Postgres; the read-model gate is told the version rather than asked (no NATS needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobrunner.common.settings import Settings
from jobrunner.services.api.context import ProjectionTracker, read_pool
from jobrunner.services.api.readpool import ReadModelsNotRead, ReadModelsTimeout, ReadPool
from jobrunner.services.api.streamlookups import StreamLookups, StreamReadsAway
from tests.tools.api_parts import serving_gate

pytestmark = pytest.mark.timeout(60)

LOCK = 4242
# A read that waits while the test holds LOCK.
WAITING_READ = f"SELECT pg_advisory_xact_lock_shared({LOCK})"
SHORT_BOUND = 0.5  # the failing reads'
LONG_BOUND = 30.0  # the read that answers late: it waits for the lock, never for its bound


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[ReadPool]:
    pool = await read_pool(settings.database_url, LONG_BOUND)
    try:
        yield pool
    finally:
        await pool.pool.close()


async def until_a_read_waits_for_the_lock(holder: asyncpg.Connection) -> None:
    """Until a read waits for LOCK (Postgres says so; it sends no notice of it)."""
    async with asyncio.timeout(30):
        while not await holder.fetchval(  # noqa: ASYNC110
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ):
            await asyncio.sleep(0.02)


async def test_a_read_answered_after_a_newer_failure_tells_no_resync(
    settings: Settings, pool: ReadPool
) -> None:
    """A stream's read missed (not made while another read tested Postgres); the pause ended;
    the stream's next read begins, another stream's read then fails, and only after that the
    stream's read answers: the stream is not told to resync."""
    gate = serving_gate()
    away = StreamReadsAway()  # one for all the API's streams
    stream = StreamLookups(pool, gate, LONG_BOUND, pause=0.0, away=away)
    other = StreamLookups(pool, gate, SHORT_BOUND, pause=0.0, away=away)
    holder = await asyncpg.connect(settings.database_url)
    try:
        await holder.execute(f"SELECT pg_advisory_lock({LOCK})")
        with pytest.raises(ReadModelsTimeout):
            await other.fetchval(WAITING_READ)  # the pause begins (and is over at once)
        testing = asyncio.ensure_future(other.fetchval(WAITING_READ))  # tests Postgres
        await until_a_read_waits_for_the_lock(holder)
        with pytest.raises(ReadModelsNotRead):
            await stream.fetchval("SELECT 1")  # not made meanwhile: the stream missed a read
        with pytest.raises(ReadModelsTimeout):
            await testing
        await other.fetchval("SELECT 1")  # the next test answers: the pause is over
        late = asyncio.ensure_future(stream.fetchval(WAITING_READ))
        await until_a_read_waits_for_the_lock(holder)
        with pytest.raises(ReadModelsTimeout):
            await other.fetchval(WAITING_READ)  # a failure after the stream's read began
        await holder.execute(f"SELECT pg_advisory_unlock({LOCK})")
        await late  # answered after that failure
    finally:
        await holder.close()
    assert not await stream.take_resync(ProjectionTracker())
