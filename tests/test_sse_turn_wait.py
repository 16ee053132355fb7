"""A viewer in line for a catch-up read's turn (session 20, s20turnwait): it gets keep-alives
while it waits, and the live events arriving meanwhile do not get it cut when its turn comes.

Each test holds the process's one turn with another job's read whose client reads slowly but
within its idle limit, as a viewer on a slow link does."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import Fanout, JobFeed, Limits, Subscriber
from tests.tools.waiting import until

pytestmark = pytest.mark.timeout(120)

KEEPALIVE = 0.1
HISTORY_IDLE = 5.0
HOLDER_WAITS = HISTORY_IDLE * 0.8  # the longest the holder's client leaves an item untaken
KEEP_ALIVE = sse.comment("keep-alive")
SSE_ID = re.compile(rb"^id: (\d+)", re.MULTILINE)


# A client's limit: the smallest the settings allow (``sse_client_buffer_bytes``). Session 20's
# 64 KiB, smaller than one hand-over piece (``HAND_OVER_BYTES``), cut the live viewer in 2 runs
# of 4 (bench/RESULTS.md, s21turnwait); a feed now hands a piece over only once a client has
# room for it whole (``JobFeed._behind``, tests/test_sse_pacing.py).
CLIENT_BYTES = 1 << 20
LINE_BYTES = 16 << 10  # a flood's line


def one_turn(
    js: JetStreamContext, settings: Settings, history_idle: float = HISTORY_IDLE
) -> Fanout:
    limits = Limits(
        keepalive=KEEPALIVE,
        client_bytes=CLIENT_BYTES,
        total_bytes=64 << 20,
        history_idle=history_idle,
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


async def hold_the_turn(fanout: Fanout, took: asyncio.Event, release: asyncio.Event) -> None:
    """Another job's catch-up read holding the one turn: its client takes the first item, then
    the next only once ``release`` is set or after ``HOLDER_WAITS`` (within its idle limit: the
    turn stays its own), then the rest."""
    async for _ in fanout.history("other", 1, 10):
        if not took.is_set():
            took.set()
            try:
                async with asyncio.timeout(HOLDER_WAITS):
                    await release.wait()
            except TimeoutError:
                pass


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
    fanout = one_turn(js, settings)
    holder_took, flood_handed_on = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_the_turn(fanout, holder_took, flood_handed_on))
    await holder_took.wait()

    async def live_viewer() -> None:  # follows the feed from its end: no history read
        async for _ in sse.job_stream(1000, fanout, "flood", first + 1, None, None):
            pass

    live = asyncio.create_task(live_viewer())
    await until(lambda: fanout.clients == 1, "the viewer connected")
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
    await until(lambda: fanout.clients == 2, "both viewers connected")
    last = await publish_lines(js, names, "flood", 320, LINE_BYTES)  # 5x the viewer's limit
    await until(
        lambda: fanout.feeds["flood"].last_seq >= last or waiting.done(),
        "the flood's feed read to its end",
    )
    flood_handed_on.set()
    await waiting
    await holder
    live.cancel()
    await asyncio.gather(live, return_exceptions=True)
    ids = [int(i) for i in SSE_ID.findall(b"".join(waiting_chunks))]
    assert ids == list(range(first, last + 1))  # every line once, in order
    assert ends_early == 0
    assert fanout.clients_cut == 0


async def paused_for_a_stuck_client(
    js: JetStreamContext, settings: Settings, fanout: Fanout
) -> tuple[JobFeed, Subscriber, int]:
    """A flood's feed whose one client never takes: the feed pauses (every client behind) with
    the flood's rest still in NATS. The feed, the stuck inbox, the flood's last sequence."""
    names = Names(settings.prefix)
    await publish_lines(js, names, "flood", 1, 10)
    feed, stuck, _ = await fanout.join("flood")  # from the stream's end
    last = await publish_lines(js, names, "flood", 160, LINE_BYTES)  # 2.5 MiB
    await until(lambda: stuck.bytes > 0 and not feed.room.is_set(), "the stuck viewer's inbox full")
    assert feed.last_seq < last  # paused with events to come
    return feed, stuck, last


async def test_a_viewer_joining_a_feed_paused_for_another_gets_its_live_events(
    js: JetStreamContext, settings: Settings
) -> None:
    """Before (main too): the join did not wake the feed, paused for its other client, so the
    new viewer got its first live event only when the pause timed out (history_idle, here far
    longer than the test's wait)."""
    fanout = one_turn(js, settings, history_idle=600)
    feed, stuck, last = await paused_for_a_stuck_client(js, settings, fanout)
    start = feed.last_seq + 1  # at the feed: no history read
    chunks: list[bytes] = []
    stream = sse.job_stream(1000, fanout, "flood", start, None, None)
    try:
        async with asyncio.timeout(60):
            async for chunk in stream:
                chunks.append(chunk)
                if [int(i) for i in SSE_ID.findall(b"".join(chunks))][-1:] == [last]:
                    break
    finally:
        await stream.aclose()
        feed.leave(stuck)
    ids = [int(i) for i in SSE_ID.findall(b"".join(chunks))]
    assert ids == list(range(start, last + 1))


async def test_a_viewer_whose_turn_comes_wakes_a_feed_paused_for_another(
    js: JetStreamContext, settings: Settings
) -> None:
    """The review's case: a viewer waits for its turn (held, not counted by the feed's pause)
    while the feed pauses for its other, stuck client. Before: the turn's coming did not wake the
    feed, and the viewer's events after its history waited for the pause to time out."""
    names = Names(settings.prefix)
    await publish_lines(js, names, "other", 10, 10)
    fanout = one_turn(js, settings, history_idle=600)
    holder_took, release = asyncio.Event(), asyncio.Event()

    async def hold_until_released() -> None:
        async for _ in fanout.history("other", 1, 10):
            holder_took.set()
            await release.wait()

    holder = asyncio.create_task(hold_until_released())
    await holder_took.wait()
    first = await publish_lines(js, names, "flood", 1, 10)
    # From the stream's end, after ``first``: the viewer's start lies before the feed's and
    # outside its record, so it reads its history and waits for the turn.
    feed, stuck, _ = await fanout.join("flood")
    chunks: list[bytes] = []
    last: int | None = None

    async def viewer() -> None:
        async for chunk in sse.job_stream(1000, fanout, "flood", first, None, None):
            chunks.append(chunk)
            if [int(i) for i in SSE_ID.findall(b"".join(chunks))][-1:] == [last]:
                return

    waiting = asyncio.create_task(viewer())
    try:
        await until(lambda: fanout.clients == 2, "both viewers connected")
        last = await publish_lines(js, names, "flood", 160, LINE_BYTES)
        await until(
            lambda: stuck.bytes > 0 and not feed.room.is_set(), "the stuck viewer's inbox full"
        )
        assert feed.last_seq < last  # paused for the stuck client, with events to come
        release.set()
        await holder
        async with asyncio.timeout(60):
            await waiting
    finally:
        release.set()
        waiting.cancel()
        await asyncio.gather(waiting, holder, return_exceptions=True)
        feed.leave(stuck)
    ids = [int(i) for i in SSE_ID.findall(b"".join(chunks))]
    assert ids == list(range(first, last + 1))


async def test_a_waiting_viewer_of_a_failed_feed_ends_at_once(
    js: JetStreamContext, settings: Settings
) -> None:
    """Before: a viewer in line looked at its inbox (cut: the feed failed) only after each
    keep-alive interval (here 30 s, sse_keepalive_seconds' default is 15 s). Now it waits for
    the first of its turn and its inbox's wake-up, which a cut sets."""
    names = Names(settings.prefix)
    await publish_lines(js, names, "other", 10, 10)
    first = await publish_lines(js, names, "job", 1, 10)

    def build(event: events.AnyEvent, seq: int, skip: int | None) -> list[bytes]:
        if isinstance(event, events.LineLogged) and event.lines[0].text == "boom":
            raise RuntimeError("the feed fails")
        return sse.frames_for(event, seq, skip)

    limits = Limits(
        keepalive=30,
        client_bytes=CLIENT_BYTES,
        total_bytes=64 << 20,
        history_idle=60,
        history_reads=1,
    )
    fanout = Fanout(js, names, build, limits)
    holder_took, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async for _ in fanout.history("other", 1, 10):
            holder_took.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holder_took.wait()
    feed, other, _ = await fanout.join("job")  # the feed from the stream's end

    async def waiting_viewer() -> None:
        async for _ in sse.job_stream(1000, fanout, "job", first, None, None):
            pass

    waiting = asyncio.create_task(waiting_viewer())
    try:
        await until(lambda: fanout.clients == 2, "both viewers connected")
        now = datetime.now(UTC)
        boom = events.LineLogged(
            job_id="job", lines=[events.LogLine(0, "stdout", "INFO", now, "boom")]
        )
        await eventstore.publish_many(js, names, [boom])
        await until(lambda: other.overflow, "the other viewer cut for overflow")
        # The feed failed and cut every inbox: the waiting viewer ends now, not at its next
        # keep-alive (30 s) or its turn.
        async with asyncio.timeout(5):
            await waiting
    finally:
        release.set()
        waiting.cancel()
        await asyncio.gather(waiting, holder, return_exceptions=True)
        feed.leave(other)


async def test_a_turn_that_comes_while_the_keep_alive_is_written_is_held(
    js: JetStreamContext, settings: Settings
) -> None:
    """Before: ``HistoryTurn.taken`` set ``held`` only when the place came while it waited. A
    place that came while its caller was away (writing its keep-alive to a slow link: the yield
    lets the loop run) was returned as True with ``held`` False: the history read ended after
    its first item (``HistoryStalled``), and never armed its idle limit."""
    names = Names(settings.prefix)
    await publish_lines(js, names, "other", 10, 10)
    last = await publish_lines(js, names, "job", 20, 10)
    fanout = one_turn(js, settings)
    holder_took, kept_alive = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async for _ in fanout.history("other", 1, 10):
            if not holder_took.is_set():
                holder_took.set()
                await kept_alive.wait()  # lets go while the viewer writes its keep-alive

    holder = asyncio.create_task(hold())
    await holder_took.wait()
    chunks: list[bytes] = []
    stream = sse.job_stream(1000, fanout, "job", last - 19, None, None)
    try:
        async with asyncio.timeout(30):
            async for chunk in stream:
                chunks.append(chunk)
                if chunk == KEEP_ALIVE and not kept_alive.is_set():
                    kept_alive.set()
                    await asyncio.sleep(0.3)  # the write to a slow link
                if [int(i) for i in SSE_ID.findall(b"".join(chunks))][-1:] == [last]:
                    break
    finally:
        await stream.aclose()
        await holder
    ids = [int(i) for i in SSE_ID.findall(b"".join(chunks))]
    assert fanout.history_turns_given_back == 0
    assert ids == list(range(last - 19, last + 1))  # every line, not one then a cut
