"""An outage is no bad event: with Postgres gone and back, the projector retries the same batch,
sets nothing aside, and every event is applied once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts.events import JobStatus
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests import servers
from tests.history_support import job_events, publish, wait_projected
from tests.system import System


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
    conn = await asyncpg.connect(settings.database_url)
    try:
        jobs = await conn.fetch("SELECT id, status FROM readmodel.jobs ORDER BY id")
        set_aside = await conn.fetchval("SELECT count(*) FROM readmodel.projector_failures")
    finally:
        await conn.close()
    assert [tuple(r) for r in jobs] == [("before", "pending"), ("during", "completed")]
    assert set_aside == 0


@pytest.fixture
async def forgetful_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """Loses its last seconds of acknowledged commits when killed (servers.FORGETFUL)."""
    async with servers.own_postgres("jobrunner-test-forgetful-", **servers.FORGETFUL) as server:
        yield server


async def test_postgres_back_without_acknowledged_commits_has_them_applied_again(
    settings: Settings, forgetful_postgres: EmbeddedPostgres
) -> None:
    """Postgres killed right after the projector committed a batch, and back without it: the
    projector notices the stored checkpoint is behind what it committed and applies those events
    again, so the read models equal the stream. Before the fix it noticed only when a batch
    failed first; the pool reconnects without a failure, so the next batch moved the checkpoint
    past the forgotten events and they were never applied."""
    settings = msgspec.structs.replace(settings, database_url=forgetful_postgres.url)
    system = System(settings)
    await system.start_projector()
    try:
        await wait_projected(settings, await publish(settings, job_events("first")))
        await wait_projected(settings, await publish(settings, job_events("forgotten")))
        await asyncio.to_thread(forgetful_postgres.kill)
        await asyncio.to_thread(forgetful_postgres.start)
        conn = await asyncpg.connect(settings.database_url)
        try:
            forgot = await conn.fetchval(
                "SELECT count(*) FROM readmodel.jobs WHERE id = 'forgotten'"
            )
        finally:
            await conn.close()
        # The fault under test: had the commit survived, there would be nothing to apply again.
        assert forgot == 0, "the kill did not lose the last commit: the test proves nothing"
        await wait_projected(settings, await publish(settings, job_events("after")), timeout=60)
    finally:
        await system.stop()
    conn = await asyncpg.connect(settings.database_url)
    try:
        jobs = await conn.fetch("SELECT id FROM readmodel.jobs ORDER BY id")
    finally:
        await conn.close()
    assert [r["id"] for r in jobs] == ["after", "first", "forgotten"]
