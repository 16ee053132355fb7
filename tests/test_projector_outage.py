"""An outage is no bad event: with Postgres gone and back, the projector retries the same batch,
sets nothing aside, and every event is applied once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts.events import JobStatus
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests import servers
from tests.history_support import job_events, publish, wait_projected
from tests.system import System


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres of this test's own: it is killed, so it must not be the shared one."""
    async with servers.own_postgres("jobrunner-test-outage-") as server:
        yield server


async def test_postgres_killed_and_back_sets_nothing_aside(
    settings: Settings, own_postgres: EmbeddedPostgres
) -> None:
    """Postgres killed while jobs arrive: once it is back, every job shows and nothing is set
    aside."""
    settings = msgspec.structs.replace(settings, database_url=own_postgres.url)
    system = System(settings)
    await system.start_projector()
    try:
        await wait_projected(settings, await publish(settings, job_events("before")))
        await asyncio.to_thread(own_postgres.kill)
        last = await publish(settings, job_events("during", status=JobStatus.COMPLETED))
        await asyncio.sleep(0)  # the projector meets the outage on its own schedule
        await asyncio.to_thread(own_postgres.start)
        await wait_projected(settings, last, timeout=60)
        assert not system._tasks["projector"].done()
    finally:
        await system.stop()
    conn = await __import__("asyncpg").connect(settings.database_url)
    try:
        jobs = await conn.fetch("SELECT id, status FROM readmodel.jobs ORDER BY id")
        set_aside = await conn.fetchval("SELECT count(*) FROM readmodel.projector_failures")
    finally:
        await conn.close()
    assert [tuple(r) for r in jobs] == [("before", "pending"), ("during", "completed")]
    assert set_aside == 0
