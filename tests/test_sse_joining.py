"""What a viewer's stream request costs before its first event: a job's later viewers are
answered from its feed (no read of the job's row each), and a stream without Last-Event-ID
reads no last status from JetStream (it starts at the job's request, which every status
follows)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.services.api import readmodels
from jobrunner.services.api.fanout import Fanout
from tests.jetstream_reads import last_by_subject_reads
from tests.sse_client import SseStream, read_stream
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


def fanout_of(system: System) -> Fanout:
    fanout: Fanout = system._server.config.app.state.ctx.fanout  # type: ignore[union-attr]
    return fanout


async def start_projected(system: System, lines: int, interval: str) -> str:
    """A job whose request the read models hold (this API no longer knows it as just posted)."""
    parameters = {"lines": lines, "interval": interval}
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": parameters}
        )
    assert response.status_code == 201, response.text
    job_id = str(response.json()["id"])
    ctx: Any = system._server.config.app.state.ctx  # type: ignore[union-attr]
    async with asyncio.timeout(30):
        while ctx.posted.get(job_id, ctx.projection.applied) is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return job_id


def line_texts(stream: SseStream) -> list[str]:
    return [e.json["text"] for e in stream.events if e.event == "message"]


async def test_later_viewers_of_a_followed_job_read_no_row(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = await start_projected(system, lines=60, interval="0.02")
    reads: list[str] = []
    read_row = readmodels.get_job_row

    async def counted(pool: Any, wanted: str) -> Any:
        reads.append(wanted)
        return await read_row(pool, wanted)

    monkeypatch.setattr(readmodels, "get_job_row", counted)
    path = f"/jobs/stream/{job_id}"
    fanout = fanout_of(system)
    async with system.client() as client:
        first = asyncio.create_task(read_stream(client, path))
        async with asyncio.timeout(30):
            while fanout.known_row(job_id) is None:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.01)
        later = await asyncio.gather(*(read_stream(client, path) for _ in range(5)))
        streams = [await first, *later]
    assert len(reads) == 1  # the first viewer's
    expected = [f"INFO line {i} [{i}/60]" for i in range(1, 61)]
    for stream in streams:
        assert line_texts(stream) == expected
        assert stream.events[-1].event == "done"


async def test_a_followed_job_is_still_refused_to_who_may_not_see_it(system: System) -> None:
    """The row a feed keeps answers the access check as the row itself would."""
    job_id = await start_projected(system, lines=40, interval="0.05")
    token = await system.create_token("own-only", "viewer", own_jobs_only=True)
    path = f"/jobs/stream/{job_id}"
    fanout = fanout_of(system)
    async with system.client() as client:
        first = asyncio.create_task(read_stream(client, path))
        async with asyncio.timeout(30):
            while fanout.known_row(job_id) is None:  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.01)
        async with system.client(token=token) as other:
            refused = await other.get(path)
        await first
    assert refused.status_code == 404


async def test_a_stream_without_last_event_id_reads_no_last_status(system: System) -> None:
    job_id = await start_projected(system, lines=3, interval="0.01")
    status_subject = f"{system.settings.prefix}.job.{job_id}.status"
    async with (
        last_by_subject_reads(system.settings.nats_url) as reads,
        system.client() as client,
    ):
        stream = await read_stream(client, f"/api/jobs/{job_id}/stream")
        await reads.settle()
        assert status_subject not in reads.subjects
        assert stream.events[-1].event == "done"
        first_id = next(e.id for e in stream.events if e.event == "message")
        await read_stream(client, f"/api/jobs/{job_id}/stream", last_event_id=first_id)
    assert status_subject in reads.subjects
