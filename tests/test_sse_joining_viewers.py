"""Many viewers opening one job's stream at once, before its feed runs: they share one read of
the job's row (sharedreads.py), so the API's read pool is not queued with one read each; one
Postgres connection lost under that read fails at most the viewer whose request started it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.services.api import readmodels
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.routes import streams
from jobrunner.services.api.security import Principal
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.backend_activity import until_backends
from tests.tools.emit_jobs import emit_job
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.waiting import until
from tests.tools.wide_viewers import fanout_of, stream_texts

pytestmark = pytest.mark.timeout(120)

VIEWERS = 50
LINES = 200


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings,
        job_types_file=TEST_TYPES,
        max_streams_per_token=VIEWERS + 10,
        # A stream's read of the job's row is bounded by stream_read_timeout_seconds (past it
        # the job is followed from its JobRequested): the test holds the row's lock while fifty
        # viewers arrive, which may last longer than the 5 s default on a loaded machine.
        stream_read_timeout_seconds=60.0,
    )


async def test_viewers_arriving_together_share_one_read_of_the_jobs_row(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty viewers opening a job's stream at once cost one read of its row, not fifty; one
    leaving meanwhile does not fail the others, and each gets every line once. (Whether the
    read's starter leaving cancels it for the others is the unit tests' to show: uvicorn does
    not cancel a request's handler when its client goes.)"""
    job_id = await emit_job(system, lines=LINES, interval="0.002")  # applied: no longer "posted"
    reads: list[str] = []
    arrived: list[str] = []
    get_job_row = readmodels.get_job_row
    streamable_job = streams.streamable_job

    async def counted_read(pool: asyncpg.Pool, job_id: str) -> asyncpg.Record | None:
        reads.append(job_id)
        return await get_job_row(pool, job_id)

    async def counted_arrival(ctx: ApiContext, job_id: str, who: Principal) -> Mapping[str, Any]:
        arrived.append(job_id)
        return await streamable_job(ctx, job_id, who)

    monkeypatch.setattr(readmodels, "get_job_row", counted_read)
    monkeypatch.setattr(streams, "streamable_job", counted_arrival)
    path = f"/jobs/stream/{job_id}"
    # The row's table locked (a real Postgres lock): every viewer arrives while the read waits.
    holder = await asyncpg.connect(system.settings.database_url)
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute(f"LOCK TABLE {READ_SCHEMA}.jobs IN ACCESS EXCLUSIVE MODE")
        async with system.client(limits=httpx.Limits(max_connections=None)) as client:
            viewers = [asyncio.ensure_future(read_stream(client, path)) for _ in range(VIEWERS)]
            try:
                await until(
                    lambda: len(arrived) == VIEWERS and bool(reads),
                    "every viewer arrived and a read began",
                )
                assert fanout_of(system).known_row(job_id) is None  # no feed yet: all must read
                assert len(reads) == 1
                viewers[0].cancel()  # a viewer goes away while the read waits
                await asyncio.wait([viewers[0]])
            finally:
                await lock.rollback()
            streams_read = await asyncio.gather(*viewers[1:])
    finally:
        await holder.close()
    assert len(reads) == 1
    expected = [f"INFO line {i} [{i}/{LINES}]" for i in range(1, LINES + 1)]
    for stream in streams_read:
        assert stream_texts(stream) == expected
        assert [e.event for e in stream.events].count("done") == 1
        assert stream.events[-1].event == "done"


async def test_one_lost_read_connection_fails_one_viewer_not_all(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty viewers arrive while the row's table is locked; Postgres drops the connection of
    one waiting read: at most one viewer fails, the others stream the job."""
    arrived: list[str] = []
    streamable_job = streams.streamable_job

    async def counted_arrival(ctx: ApiContext, job_id: str, who: Principal) -> Mapping[str, Any]:
        arrived.append(job_id)
        return await streamable_job(ctx, job_id, who)

    monkeypatch.setattr(streams, "streamable_job", counted_arrival)
    job_id = await emit_job(system, lines=20, interval="0.002")
    path = f"/jobs/stream/{job_id}"
    holder = await asyncpg.connect(system.settings.database_url)
    row_read = f"SELECT % FROM {READ_SCHEMA}.jobs WHERE id = $1%"
    try:
        lock = holder.transaction()
        await lock.start()
        await holder.execute(f"LOCK TABLE {READ_SCHEMA}.jobs IN ACCESS EXCLUSIVE MODE")
        async with system.client(limits=httpx.Limits(max_connections=None)) as client:
            viewers = [asyncio.ensure_future(read_stream(client, path)) for _ in range(VIEWERS)]
            try:
                # Every viewer's request is in (main: ten reads on the pool's connections wait
                # for the lock, forty queue for a connection; branch: one read, 49 joined).
                await until(lambda: len(arrived) == VIEWERS, "every viewer arrived")
                # On the holder's open transaction: backend_activity clears the snapshot of
                # pg_stat_activity Postgres keeps for it.
                pids = await until_backends(holder, query_like=row_read, waiting_on_a_lock=True)
                # Postgres drops one connection (a backend killed, a restart of one session).
                assert await holder.fetchval("SELECT pg_terminate_backend($1, 10000)", pids[0])
                # (its second argument: returns once the backend has exited)
            finally:
                await lock.rollback()
            results = await asyncio.gather(*viewers, return_exceptions=True)
    finally:
        await holder.close()
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) <= 1, f"{len(failed)} of {VIEWERS} viewers failed for one lost connection"
