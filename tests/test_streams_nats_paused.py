"""An open event stream across a NATS pause (SIGSTOP/SIGCONT of a real nats-server): it never
ends by a crash. It goes on by itself, or ends with one ``unavailable`` event (code
NATS_UNAVAILABLE) and the client resumes with ``Last-Event-ID``; either way no event is lost or
sent twice. (Before, a pause past nats-py's 5 s request timeout, met while a stream opened its
consumer, cut the connection mid-body: "peer closed connection without sending complete message
body".)"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze, thaw_later
from tests.sse_client import SseEvent, iter_events
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

TERMINAL = {"completed", "failed", "cancelled"}

# nats-py's JetStream requests time out after 5 s; an ordered consumer's idle heartbeat is 5 s,
# and nats-py makes the consumer again after two missed ones (checked every 10 s).
PAUSES = [4.0, 6.0, 12.0]


@pytest.fixture
def settings(settings: Settings, own_nats: EmbeddedNats) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, nats_url=own_nats.url)


def pause(own_nats: EmbeddedNats, seconds: float) -> asyncio.TimerHandle:
    """Stop the server now and let it run again ``seconds`` later."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    freeze(pid)
    return thaw_later(seconds, pid)


async def start_job(system: System, **parameters: Any) -> str:
    """Started once NATS answers again (the API may still be reconnecting)."""
    async with asyncio.timeout(40), system.client() as client:
        while True:
            created = await client.post(
                "/api/jobs", json={"job_type": "emit", "parameters": parameters}
            )
            if created.status_code == 201:
                return str(created.json()["id"])
            await asyncio.sleep(0.5)


class Resumed:
    """What a client following one stream sees, resuming as EventSource does."""

    def __init__(self, on_open: Any = None) -> None:
        self.events: list[SseEvent] = []
        self.endings: list[str] = []  # "unavailable" per clean end
        self.on_open = on_open  # called once, as the stream first answers 200

    async def follow(
        self, client: httpx.AsyncClient, path: str, done: Any, last_id: str | None = None
    ) -> None:
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            async with client.stream("GET", path, headers=headers) as response:
                if response.status_code != 200:  # NATS not answering yet as it opens
                    await asyncio.sleep(0.5)
                    continue
                if self.on_open is not None:
                    self.on_open()
                    self.on_open = None
                said: list[bool] = []  # what this connection's ``stale`` events said
                async for event in iter_events(response):
                    if event.event == "unavailable":
                        assert event.json["code"] == "NATS_UNAVAILABLE", event.data
                        self.endings.append(event.event)
                        break
                    if event.event == "stale":
                        # NATS silent past nats_silence_seconds and back: said, not an event of
                        # the job (test_nats_silence.py).
                        said.append(event.json["stale"])
                        # Each change once, silent first (a connection cut while NATS is
                        # silent may end before the word that it answers again).
                        assert said == [i % 2 == 0 for i in range(len(said))], said
                        continue
                    self.events.append(event)
                    last_id = event.id or last_id
                    if done(self.events):
                        return
                else:
                    raise AssertionError("the stream ended without a word")


async def reference(client: httpx.AsyncClient, path: str, done: Any) -> list[SseEvent]:
    """The same stream read again once all is quiet: what the follower should have seen."""
    seen: list[SseEvent] = []
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        async for event in iter_events(response):
            seen.append(event)
            if done(seen):
                return seen
    raise AssertionError("the reference stream ended early")


def ids(events: list[SseEvent]) -> list[str | None]:
    return [e.id for e in events]


@pytest.mark.parametrize("when", ["opening", "opened"])
@pytest.mark.parametrize("seconds", PAUSES)
async def test_update_stream_across_a_nats_pause(
    system: System, own_nats: EmbeddedNats, seconds: float, when: str
) -> None:
    """``GET /api/jobs/stream?after=0``, paused before it opens, or as it has just answered
    (reading its backlog, making its consumers); then a job runs to its end. Every update comes
    once, in order."""
    await start_job(system, lines=3)  # a backlog to read
    if when == "opening":
        pause(own_nats, seconds)
    follower = Resumed(on_open=(lambda: pause(own_nats, seconds)) if when == "opened" else None)
    job_id: list[str] = []

    def done(events: list[SseEvent]) -> bool:
        return bool(job_id) and any(
            e.event == "job_update"
            and e.json["jobId"] == job_id[0]
            and e.json["status"] in TERMINAL
            for e in events
        )

    async with system.client() as client:
        following = asyncio.create_task(follower.follow(client, "/api/jobs/stream?after=0", done))
        await asyncio.sleep(seconds + 0.5)
        job_id.append(await start_job(system, lines=3))
        async with asyncio.timeout(60):
            await following
        expected = await reference(client, "/api/jobs/stream?after=0", done)
    assert ids(follower.events) == ids(expected), (follower.endings, ids(follower.events))
    if seconds < 5:  # every request waited out the pause: nothing had to end
        assert not follower.endings


@pytest.mark.parametrize("when", ["opening", "opened", "running"])
@pytest.mark.parametrize("seconds", PAUSES)
async def test_job_stream_across_a_nats_pause(
    system: System, own_nats: EmbeddedNats, seconds: float, when: str
) -> None:
    """``GET /api/jobs/{id}/stream`` of a job printing a line every 50 ms, NATS paused before
    the stream opens, as it has just answered, or a second into it: every line and the end come
    once, in order."""
    job_id = await start_job(system, lines=200, interval="0.05")
    if when == "opening":
        pause(own_nats, seconds)
    follower = Resumed(on_open=(lambda: pause(own_nats, seconds)) if when == "opened" else None)

    def done(events: list[SseEvent]) -> bool:
        return any(e.event == "done" for e in events)

    async with system.client() as client:
        following = asyncio.create_task(follower.follow(client, f"/api/jobs/{job_id}/stream", done))
        if when == "running":
            await asyncio.sleep(1.0)
            pause(own_nats, seconds)
        await asyncio.sleep(seconds + 1.5)
        async with asyncio.timeout(90):
            await following
        expected = await reference(client, f"/api/jobs/{job_id}/stream", done)
    assert ids(follower.events) == ids(expected), (follower.endings, ids(follower.events))
    if seconds < 5:  # every request waited out the pause: nothing had to end
        assert not follower.endings
