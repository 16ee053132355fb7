"""A token limited to its own jobs while Postgres is stopped: the live streams, which then know
jobs from NATS alone, still never show it another user's job. A job stream looks the job's
owner up in its JobRequested; the all-jobs stream, which may not have seen a job's request,
leaves out an event whose job's owner it cannot read (it fails closed) and stays open."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests.sse_client import iter_events
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.runners import start_job, wait_status


@pytest.fixture
def settings(settings: Settings, own_postgres: EmbeddedPostgres) -> Settings:
    """On a Postgres of the test's own (the test stops it), with tokens required. No runner
    runs (``projector_and_api``) until a test starts one: its jobs wait."""
    return msgspec.structs.replace(
        settings, database_url=own_postgres.url, job_types_file=TEST_TYPES, auth=True
    )


async def test_an_own_jobs_token_is_refused_anothers_job_stream_while_postgres_is_down(
    projector_and_api: System, own_postgres: EmbeddedPostgres
) -> None:
    """404 JOB_NOT_FOUND for another user's job, 200 for its own: the owner is the one its
    JobRequested names."""
    mine = await projector_and_api.create_token("mine", "operator", own_jobs_only=True)
    other = await projector_and_api.create_token("other", "operator", own_jobs_only=True)
    async with (
        projector_and_api.client(token=mine) as me,
        projector_and_api.client(token=other) as them,
    ):
        my_job = await start_job(me, "emit", lines=1)
        their_job = await start_job(them, "emit", lines=1)
        await wait_status(me, my_job, "pending")
        await wait_status(them, their_job, "pending")
        await asyncio.to_thread(own_postgres.stop)
        try:
            hidden = await me.get(f"/jobs/stream/{their_job}")
            assert hidden.status_code == 404, hidden.text
            assert hidden.json()["error"]["code"] == "JOB_NOT_FOUND"
            async with me.stream("GET", f"/jobs/stream/{my_job}") as shown:
                assert shown.status_code == 200, await shown.aread()
        finally:
            await asyncio.to_thread(own_postgres.start)


async def test_an_own_jobs_all_jobs_stream_shows_no_job_it_cannot_check_while_postgres_is_down(
    projector_and_api: System, own_postgres: EmbeddedPostgres
) -> None:
    """Jobs requested before the stream opened run while Postgres is down: the stream cannot
    read their owners, shows neither (its own neither: fail closed), and stays open; once
    Postgres is back, the token's next job shows."""
    mine = await projector_and_api.create_token("mine", "operator", own_jobs_only=True)
    other = await projector_and_api.create_token("other", "operator", own_jobs_only=True)
    seen: list[tuple[str, str]] = []
    async with (
        projector_and_api.client(token=mine) as me,
        projector_and_api.client(token=other) as them,
        projector_and_api.client() as admin,
        asyncio.timeout(90),
    ):
        my_job = await start_job(me, "emit", lines=1)
        their_job = await start_job(them, "emit", lines=1)
        await wait_status(me, my_job, "pending")
        await wait_status(them, their_job, "pending")
        # No ``after``: both streams start after the jobs' requests; neither knows them.
        async with (
            me.stream("GET", "/api/jobs/stream") as mine_stream,
            admin.stream("GET", "/api/jobs/stream") as every_stream,
        ):
            assert mine_stream.status_code == 200, await mine_stream.aread()
            assert every_stream.status_code == 200, await every_stream.aread()
            await asyncio.to_thread(own_postgres.stop)
            postgres_stopped = True
            try:
                await projector_and_api.start_runner()
                # The admin's stream tells when both have ended (from their status events).
                ended: set[str] = set()
                async for event in iter_events(every_stream):
                    if event.event == "job_update" and event.json["status"] == "completed":
                        ended.add(event.json["jobId"])
                        if ended >= {my_job, their_job}:
                            break
                await asyncio.to_thread(own_postgres.start)
                postgres_stopped = False
                my_next = await start_job(me, "emit", lines=1)
                async for event in iter_events(mine_stream):
                    if event.event == "job_update":
                        seen.append((event.json["jobId"], event.json["status"]))
                        if (my_next, "completed") in seen:
                            break
            finally:
                if postgres_stopped:
                    await asyncio.to_thread(own_postgres.start)
    assert {job for job, _ in seen} == {my_next}, seen
