"""Many clients on one job share one JetStream subscription; each still gets every event once."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.sse_client import SseStream, read_stream
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, sse_keepalive_seconds=0.5)


async def start(system: System, **parameters: object) -> str:
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": parameters}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def line_texts(stream: SseStream) -> list[str]:
    return [e.json["text"] for e in stream.events if e.event == "message"]


async def test_clients_joining_at_different_moments_each_get_every_line_once(
    system: System,
) -> None:
    """Twelve viewers, some opening the page while the job runs, all see the same full log."""
    job_id = await start(system, lines=150, interval="0.01")
    path = f"/jobs/stream/{job_id}"
    async with system.client() as client:

        async def viewer(delay: float) -> SseStream:
            await asyncio.sleep(delay)
            return await read_stream(client, path)

        streams = await asyncio.gather(*(viewer(0.1 * (i % 6)) for i in range(12)))
    expected = [f"INFO line {i} [{i}/150]" for i in range(1, 151)]
    for stream in streams:
        assert line_texts(stream) == expected
        ids = [e.id for e in stream.events if e.id]
        assert len(ids) == len(set(ids))
        assert stream.events[-1].event == "done"


async def test_a_resuming_client_next_to_live_ones_gets_exactly_the_rest(system: System) -> None:
    """A reconnect with Last-Event-ID while other viewers follow live repeats and skips nothing."""
    job_id = await start(system, lines=120, interval="0.01")
    path = f"/jobs/stream/{job_id}"
    async with system.client() as client:
        live = [asyncio.create_task(read_stream(client, path)) for _ in range(6)]
        first = await read_stream(client, path, stop_after=40)
        last_id = [e.id for e in first.events if e.id][-1]
        rest = await read_stream(client, path, last_event_id=last_id)
        live_streams = await asyncio.gather(*live)
    expected = [f"INFO line {i} [{i}/120]" for i in range(1, 121)]
    assert line_texts(first) + line_texts(rest) == expected
    for stream in live_streams:
        assert line_texts(stream) == expected


async def test_a_quiet_job_sends_keep_alive_comments(system: System) -> None:
    """While a running job prints nothing for a while, its stream still shows signs of life."""
    job_id = await start(system, lines=2, interval="1.5")
    async with system.client() as client:
        stream = await read_stream(client, f"/jobs/stream/{job_id}")
    assert "keep-alive" in stream.comments
    assert line_texts(stream) == ["INFO line 1 [1/2]", "INFO line 2 [2/2]"]


async def test_the_first_viewer_of_a_new_job_has_its_feed_start_at_the_jobs_start(
    system: System,
) -> None:
    """The first viewer of a job just started gets its whole log from a feed begun at the job's
    first event, with no history read before the first line."""
    job_id = await start(system, lines=5, interval="0.1")
    assert system._server is not None
    fanout = system._server.config.app.state.ctx.fanout
    async with system.client() as client:
        reading = asyncio.create_task(read_stream(client, f"/jobs/stream/{job_id}"))
        async with asyncio.timeout(10):
            while job_id not in fanout.feeds and not reading.done():  # noqa: ASYNC110 - no event to wait on
                await asyncio.sleep(0.01)
        feed = fanout.feeds.get(job_id)
        stream = await reading
    assert feed is not None
    assert feed.start_seq is not None
    assert line_texts(stream) == [f"INFO line {i} [{i}/5]" for i in range(1, 6)]


async def test_a_feed_begun_at_a_resume_point_serves_a_later_viewer_from_the_start(
    system: System,
) -> None:
    """A reconnecting viewer alone on a job starts its feed where it stopped; a viewer opening
    the page afterwards still gets the whole log, once."""
    job_id = await start(system, lines=120, interval="0.01")
    path = f"/jobs/stream/{job_id}"
    async with system.client() as client:
        first = await read_stream(client, path, stop_after=40)
        last_id = [e.id for e in first.events if e.id][-1]
        rest = asyncio.create_task(read_stream(client, path, last_event_id=last_id))
        await asyncio.sleep(0.2)
        whole = await read_stream(client, path)
        rest_stream = await rest
    expected = [f"INFO line {i} [{i}/120]" for i in range(1, 121)]
    assert line_texts(first) + line_texts(rest_stream) == expected
    assert line_texts(whole) == expected
    ids = [e.id for e in whole.events if e.id]
    assert len(ids) == len(set(ids))


async def test_viewers_arriving_as_a_job_starts_read_no_history_from_jetstream(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten viewers opening a job just started all get its whole log from the one feed's record,
    none with a JetStream consumer of its own."""
    assert system._server is not None
    fanout = system._server.config.app.state.ctx.fanout
    history_reads = 0
    read_history = fanout.history

    def counted(*args: object) -> object:
        nonlocal history_reads
        history_reads += 1
        return read_history(*args)

    monkeypatch.setattr(fanout, "history", counted)
    job_id = await start(system, lines=10, interval="0.3")
    async with system.client() as client:
        streams = await asyncio.gather(
            *(read_stream(client, f"/jobs/stream/{job_id}") for _ in range(10))
        )
    for stream in streams:
        assert line_texts(stream) == [f"INFO line {i} [{i}/10]" for i in range(1, 11)]
        assert stream.events[-1].event == "done"
    assert history_reads == 0
