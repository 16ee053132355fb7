"""A viewer in line for a catch-up read's turn (session 20, s20turnwait): it gets keep-alives
while it waits, and the live events arriving meanwhile do not get it cut when its turn comes.

Each test holds the process's one turn with another job's read whose client reads slowly but
within its idle limit, as a viewer on a slow link does."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import Fanout, Limits

pytestmark = pytest.mark.timeout(120)

KEEPALIVE = 0.1
HISTORY_IDLE = 5.0
HOLDER_WAITS = HISTORY_IDLE * 0.8  # the longest the holder's client leaves an item untaken
KEEP_ALIVE = sse.comment("keep-alive")
SSE_ID = re.compile(rb"^id: (\d+)", re.MULTILINE)


def one_turn(js: JetStreamContext, settings: Settings, client_bytes: int = 1 << 20) -> Fanout:
    limits = Limits(
        keepalive=KEEPALIVE,
        client_bytes=client_bytes,
        total_bytes=64 << 20,
        history_idle=HISTORY_IDLE,
        history_reads=1,
    )
    return Fanout(js, Names(settings.prefix), sse.frames_for, limits)


async def publish_lines(
    js: JetStreamContext, names: Names, job_id: str, count: int, size: int
) -> int:
    """``count`` one-line LineLogged events of the job; the stream's last sequence after them."""
    now = datetime.now(UTC)
    batch = [
        events.LineLogged(
            job_id=job_id, lines=[events.LogLine(n, "stdout", "INFO", now, "x" * size)]
        )
        for n in range(count)
    ]
    await eventstore.publish_many(js, names, batch)
    return int((await js.stream_info(names.stream)).state.last_seq)


async def hold_the_turn(fanout: Fanout, took: asyncio.Event, until: asyncio.Event) -> None:
    """Another job's catch-up read holding the one turn: its client takes the first item, then
    the next only once ``until`` is set or after ``HOLDER_WAITS`` (within its idle limit: the
    turn stays its own), then the rest."""
    async for _ in fanout.history("other", 1, 10):
        if not took.is_set():
            took.set()
            try:
                async with asyncio.timeout(HOLDER_WAITS):
                    await until.wait()
            except TimeoutError:
                pass


async def wait_until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(60):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def test_a_viewer_waiting_for_its_turn_gets_keep_alives(
    js: JetStreamContext, settings: Settings
) -> None:
    """Before: nothing at all reached the client until the turn came (a proxy that closes
    idle connections dropped it). The holder lets go once the waiting viewer got a keep-alive,
    or after HOLDER_WAITS without one."""
    names = Names(settings.prefix)
    await publish_lines(js, names, "other", 10, 10)
    last = await publish_lines(js, names, "job", 20, 10)
    fanout = one_turn(js, settings)
    holder_took, viewer_kept_alive = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_the_turn(fanout, holder_took, viewer_kept_alive))
    await holder_took.wait()
    chunks: list[bytes] = []
    stream = sse.job_stream(1000, fanout, "job", 1, None, None)
    try:
        async for chunk in stream:
            chunks.append(chunk)
            if chunk == KEEP_ALIVE:
                viewer_kept_alive.set()
            if [int(i) for i in SSE_ID.findall(b"".join(chunks))][-1:] == [last]:
                break
    finally:
        await stream.aclose()
    await holder
    first_data = next(i for i, chunk in enumerate(chunks) if SSE_ID.search(chunk))
    assert KEEP_ALIVE in chunks[:first_data]  # while it waited, before its history
    ids = [int(i) for i in SSE_ID.findall(b"".join(chunks))]
    assert ids == list(range(last - 19, last + 1))


async def test_live_events_while_a_viewer_waits_do_not_get_it_cut(
    js: JetStreamContext, settings: Settings
) -> None:
    """Before: the feed queued the job's live events for the waiting viewer (another viewer
    reading them kept the feed from pausing) until its inbox was over its limit and it was cut,
    to go back to the end of the line. Now the waiting viewer is handed nothing, and its
    history read goes up to where the feed is when its turn comes: every line once, no cut."""
    names = Names(settings.prefix)
    await publish_lines(js, names, "other", 10, 10)
    first = await publish_lines(js, names, "flood", 1, 10)
    fanout = one_turn(js, settings, client_bytes=64 << 10)
    holder_took, flood_handed_on = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_the_turn(fanout, holder_took, flood_handed_on))
    await holder_took.wait()

    async def live_viewer() -> None:  # follows the feed from its end: no history read
        async for _ in sse.job_stream(1000, fanout, "flood", first + 1, None, None):
            pass

    live = asyncio.create_task(live_viewer())
    await wait_until(lambda: fanout.clients == 1)
    waiting_chunks: list[bytes] = []
    ends_early = 0
    last = None

    async def waiting_viewer() -> None:
        """Resumes after a cut as an EventSource does, from the last id it got."""
        nonlocal ends_early
        start = first
        while True:
            stream = sse.job_stream(1000, fanout, "flood", start, None, None)
            try:
                async for chunk in stream:
                    waiting_chunks.append(chunk)
                    ids = [int(i) for i in SSE_ID.findall(b"".join(waiting_chunks))]
                    if ids and ids[-1] == last:
                        return
            finally:
                await stream.aclose()
            ends_early += 1
            ids = [int(i) for i in SSE_ID.findall(b"".join(waiting_chunks))]
            start = ids[-1] + 1 if ids else first

    waiting = asyncio.create_task(waiting_viewer())
    await wait_until(lambda: fanout.clients == 2)
    last = await publish_lines(js, names, "flood", 300, 1000)  # about 5x the viewer's limit
    await wait_until(lambda: fanout.feeds["flood"].last_seq >= last or waiting.done())
    flood_handed_on.set()
    await waiting
    await holder
    live.cancel()
    await asyncio.gather(live, return_exceptions=True)
    ids = [int(i) for i in SSE_ID.findall(b"".join(waiting_chunks))]
    assert ids == list(range(first, last + 1))  # every line once, in order
    assert ends_early == 0
    assert fanout.clients_cut == 0
