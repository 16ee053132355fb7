"""A batch's job ends while Postgres is stopped and /api/jobs/stream is open: the stream must
wait for the projector to apply the end before it sends the batch's row, and cannot ask
Postgres how far it got. It used to end there (the read models' error re-raised mid-stream);
it waits with keep-alives and sends the batch's row once Postgres is back."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts.events import JobStatus
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests.batch_support import batch_events, ended
from tests.history_support import publish, wait_projected
from tests.sse_client import SseStream
from tests.system import System
from tests.tools.stream_reading import read_into, until

KEEPALIVE = 0.5


@pytest.fixture
def settings(settings: Settings, own_postgres: EmbeddedPostgres) -> Settings:
    """Short keep-alives and a Postgres of the test's own (for ``projector_and_api``: projector
    and API, no runner; the test publishes the events)."""
    return msgspec.structs.replace(
        settings, database_url=own_postgres.url, sse_keepalive_seconds=KEEPALIVE
    )


async def test_a_batch_row_waits_out_postgres_being_down_and_the_stream_stays_open(
    projector_and_api: System, own_postgres: EmbeddedPostgres
) -> None:
    """The job's end, met with Postgres down: keep-alives meanwhile, then the batch completed."""
    settings = projector_and_api.settings
    await wait_projected(settings, await publish(settings, batch_events("b1", 1)))
    seen = SseStream()
    async with (
        projector_and_api.client() as client,
        asyncio.timeout(60),
        client.stream("GET", "/api/jobs/stream?after=0") as response,
    ):
        assert response.status_code == 200, await response.aread()
        reader = asyncio.create_task(read_into(response, seen))
        postgres_stopped = False
        try:
            # The batch's first row sent: the stream knows the batch of its job.
            await until(reader, lambda: any(e.event == "batch_update" for e in seen.events))
            await asyncio.to_thread(own_postgres.stop)
            postgres_stopped = True
            last = await publish(settings, ended("b1-0", JobStatus.COMPLETED))
            # The stream waits for the projector (which cannot apply it), with keep-alives.
            waited = len(seen.comments)
            await until(reader, lambda: len(seen.comments) >= waited + 2)
            await asyncio.to_thread(own_postgres.start)
            postgres_stopped = False
            await until(
                reader,
                lambda: any(e.event == "batch_update" and e.id == str(last) for e in seen.events),
            )
        finally:
            reader.cancel()
            if postgres_stopped:
                await asyncio.to_thread(own_postgres.start)
    [done] = [e for e in seen.events if e.event == "batch_update" and e.id == str(last)]
    assert done.json["status"] == "completed", done.json
