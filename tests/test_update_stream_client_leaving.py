"""An update stream's client leaving while the stream's read of the read models waits."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.backend_activity import until_backends, until_no_backends
from tests.tools.emit_jobs import finished_job
from tests.tools.job_type_files import TEST_TYPES

# The stream's reads' own bounds (the read models' look-ups, the read pool's deadline), longer
# than the wait below: only the client's leaving can end the read's wait within it, however
# slowly a loaded machine runs.
OWN_BOUNDS = 600.0

# The stream's look-up of the jobs an event names (job_updates.py) as pg_stat_activity shows
# it: no other backend waiting on the lock (a late projector write) is taken for it.
STREAM_READ_TEXT = f"%FROM {READ_SCHEMA}.jobs WHERE id = ANY($1::text[])%"


class TestAnUpdateStreamsClientLeaving:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return msgspec.structs.replace(
            settings,
            job_types_file=TEST_TYPES,
            stream_read_timeout_seconds=OWN_BOUNDS,
            api_read_timeout_seconds=OWN_BOUNDS,
        )

    async def test_a_client_leaving_while_its_read_waits_releases_the_read(
        self, system: System
    ) -> None:
        """Postgres answering: an update stream's row read blocked on a table lock; its client
        leaves: the read's query is cancelled (no backend left waiting on the lock). A guard
        (passes before session 21's review fixes too); with Postgres frozen the departing
        client's read is not shown to end (bench/RESULTS.md, session 21)."""
        await finished_job(system, lines=2)
        locker = await asyncpg.connect(system.settings.database_url)
        try:
            async with locker.transaction():
                await locker.execute(f"LOCK TABLE {READ_SCHEMA}.jobs IN ACCESS EXCLUSIVE MODE")
                async with system.client() as client:

                    async def read() -> None:
                        async with client.stream("GET", "/api/jobs/stream?after=1") as r:
                            async for _ in r.aiter_raw():
                                pass

                    reading = asyncio.ensure_future(read())
                    [read_pid] = await until_backends(
                        locker,
                        query_like=STREAM_READ_TEXT,
                        waiting_on_a_lock=True,
                        unless_ended=reading,
                    )
                    reading.cancel()  # the client leaves
                    with pytest.raises(asyncio.CancelledError):
                        await reading
                # The lock is still held: only a cancel of the read ends its wait (OWN_BOUNDS).
                # The stream's own read (another backend, a late projector write, may wait
                # on the lock too, as long as the lock is held).
                await until_no_backends(locker, pid=read_pid, waiting_on_a_lock=True)
        finally:
            await locker.close()
