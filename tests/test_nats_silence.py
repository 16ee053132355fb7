"""A live viewer is told when NATS stops answering the API (a real nats-server SIGSTOPped), and
when it answers again: SSE ``stale``. A freeze shorter than ``nats_silence_seconds`` tells
nothing, a longer one tells both, and the job's lines go on across it, none lost or repeated.
(Before, a 30 s freeze showed nothing: the card stayed "Running", the lines stopped.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import msgspec
import nats
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api.natswatch import NatsWatch
from tests.sse_client import SseEvent, iter_events
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.nats_silence import BOUND, LONGER, SHORTER, started_job, thaw_after


@pytest.fixture
async def watch(own_nats: EmbeddedNats) -> AsyncIterator[tuple[NatsWatch, list[bool]]]:
    """A watch of its own connection to ``own_nats``, and what it told, in order."""
    nc = await nats.connect(own_nats.url)
    watch = NatsWatch(nc, f"_test.probe.{uuid.uuid4().hex}", BOUND)
    told: list[bool] = []
    watch.listeners.append(told.append)
    watch.start()
    try:
        yield watch, told
    finally:
        await watch.stop(within=BOUND + 1)
        await nc.close()


async def answered_after_thaw(watch: NatsWatch, thawed: asyncio.Event) -> None:
    """Wait until the watch has had an answer sent after the thaw."""
    async with asyncio.timeout(30):
        await thawed.wait()
        answers = watch.answers
        # The one in flight at the thaw, then a new one (a count: no event to wait on).
        while watch.answers < answers + 2:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_freeze_shorter_than_the_bound_tells_nothing(
    own_nats: EmbeddedNats, watch: tuple[NatsWatch, list[bool]]
) -> None:
    """NATS frozen for less than ``nats_silence_seconds``: nobody is told anything."""
    nats_watch, told = watch
    thawed = asyncio.Event()
    thaw_after(own_nats, SHORTER)
    asyncio.get_running_loop().call_later(SHORTER, thawed.set)
    await answered_after_thaw(nats_watch, thawed)
    assert told == []
    assert not nats_watch.silent


async def test_freeze_longer_than_the_bound_is_told_and_its_end_too(
    own_nats: EmbeddedNats, watch: tuple[NatsWatch, list[bool]]
) -> None:
    """NATS frozen past ``nats_silence_seconds``: told silent while frozen, answering after."""
    nats_watch, told = watch
    thawed = asyncio.Event()
    thaw_after(own_nats, LONGER)
    asyncio.get_running_loop().call_later(LONGER, thawed.set)
    first_told = asyncio.Event()
    nats_watch.listeners.append(lambda _: first_told.set())
    async with asyncio.timeout(30):
        await first_told.wait()
    assert told == [True]
    assert not thawed.is_set()  # told while it lasted
    await answered_after_thaw(nats_watch, thawed)
    assert told == [True, False]


async def test_a_wildcard_tap_on_a_healthy_server_tells_nothing(
    own_nats: EmbeddedNats, watch: tuple[NatsWatch, list[bool]]
) -> None:
    """A monitoring tap on ``>`` (it hears the probe and answers nothing): NATS is not silent."""
    nats_watch, told = watch
    tap = await nats.connect(own_nats.url)
    try:
        await tap.subscribe(">")
        await tap.flush()
        answers = nats_watch.answers
        # Probes sent after the tap came: each would time out in BOUND if the tap took them.
        async with asyncio.timeout(30):
            while nats_watch.answers < answers + 2 and not told:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await tap.close()
    assert told == []
    assert not nats_watch.silent


@pytest.fixture
def settings(settings: Settings, own_nats: EmbeddedNats) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=TEST_TYPES, nats_url=own_nats.url, nats_silence_seconds=BOUND
    )


async def followed(
    client: httpx.AsyncClient, job_id: str, own_nats: EmbeddedNats, freeze_for: float
) -> list[SseEvent]:
    """The job's stream to its end, NATS frozen for ``freeze_for`` (if any) once its first line
    came."""
    seen: list[SseEvent] = []
    async with client.stream("GET", f"/api/jobs/{job_id}/stream") as response:
        assert response.status_code == 200
        async for event in iter_events(response):
            if (
                freeze_for
                and event.event == "message"
                and not any(e.event == "message" for e in seen)
            ):
                thaw_after(own_nats, freeze_for)
            seen.append(event)
            if event.event in {"done", "unavailable"}:
                return seen
    raise AssertionError("the stream ended without done")


@pytest.mark.parametrize(("freeze_for", "told"), [(SHORTER, False), (LONGER, True)])
async def test_job_stream_tells_a_nats_silence_and_loses_no_line(
    system: System, own_nats: EmbeddedNats, freeze_for: float, told: bool
) -> None:
    """A job's viewer while NATS freezes: ``stale`` true then false for a freeze past the bound,
    nothing for a shorter one; every line once, in order, either way."""
    lines = 200
    async with system.client() as client:
        job_id = await started_job(client, lines)
        async with asyncio.timeout(90):
            seen = await followed(client, job_id, own_nats, freeze_for)
            # The job may end LEASE_LOST (the test lease is shorter than the freeze): the
            # stream read again once all is quiet is what the viewer should have seen.
            again = await followed(client, job_id, own_nats, 0)
    stale = [event.json for event in seen if event.event == "stale"]
    if told:
        assert [s["stale"] for s in stale] == [True, False], stale
        assert stale[0]["code"] == "NATS_SILENT"
    else:
        assert stale == []
    assert all(event.id is None for event in seen if event.event == "stale")
    assert seen[-1].event == "done"
    assert [e.id for e in seen if e.event != "stale"] == [e.id for e in again]
