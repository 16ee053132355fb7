"""A quiet job's events are handed on in the subscription's callback, a flood's by the feed's task.

Beside a flood every turn of the API's event loop holds a step of each of the flood's tasks, so a
quiet line's delay is about its hops times one turn; the callback is one hop fewer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.subscription import OrderedReader
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import FRAME_LINES, QUIET_BYTES, Fanout, Item, Limits, Subscriber

pytestmark = pytest.mark.timeout(60)

JOB = "quietjob"


def lines(first: int, count: int, text: str) -> events.LineLogged:
    now = datetime.now(UTC)
    return events.LineLogged(
        job_id=JOB,
        lines=[events.LogLine(n, "stdout", "INFO", now, text) for n in range(first, first + count)],
    )


async def next_items(inbox: Subscriber) -> list[Item]:
    async with asyncio.timeout(10):
        await inbox.wakeup.wait()
    return inbox.take()


async def test_a_small_arrival_skips_the_feeds_task_and_a_large_one_does_not(
    settings: Settings, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line or two reach the client without the feed's task waking; a flood's message (over
    QUIET_BYTES) is the feed's task's; the job's end through the callback ends the feed."""
    names = Names(settings.prefix)
    taken_by_task: list[Msg] = []
    next_batch = OrderedReader.next_batch

    async def counted(self: OrderedReader, timeout: float | None) -> list[Msg]:
        batch = await next_batch(self, timeout)
        taken_by_task.extend(batch)
        return batch

    monkeypatch.setattr(OrderedReader, "next_batch", counted)
    limits = Limits(keepalive=30, client_bytes=1 << 22, total_bytes=1 << 24, history_idle=10)
    fanout = Fanout(js, names, sse.frames_for, limits)
    feed, inbox, _ = await fanout.join(JOB)
    try:
        await eventstore.publish(js, names, lines(1, 1, "quiet"))
        assert [i.event.lines[0].text for i in await next_items(inbox)] == ["quiet"]
        assert taken_by_task == []

        flood = lines(2, QUIET_BYTES // 50, "x" * 100)
        await eventstore.publish(js, names, flood)
        assert [len(i.event.lines) for i in await next_items(inbox)] == [len(flood.lines)]
        assert len(taken_by_task) == 1

        end = events.StatusChanged(job_id=JOB, status=events.JobStatus.COMPLETED, exit_code=0)
        await eventstore.publish(js, names, end)
        items = await next_items(inbox)
        assert [i.terminal for i in items] == [True]
        assert feed.task is not None
        async with asyncio.timeout(10):
            await feed.task
        assert len(taken_by_task) == 1
    finally:
        feed.leave(inbox)


async def test_a_flood_message_framed_in_slices_reaches_the_client_whole(
    settings: Settings, js: JetStreamContext
) -> None:
    """A LineLogged of more than FRAME_LINES lines is framed a slice per step of the feed's task
    (the other jobs' feeds and clients in between) into one item with the frames and ids of the
    message framed at once."""
    names = Names(settings.prefix)
    limits = Limits(keepalive=30, client_bytes=1 << 22, total_bytes=1 << 24, history_idle=10)
    slices: list[int] = []

    def frame_lines(event: events.LineLogged, seq: int, first: int, stop: int) -> list[bytes]:
        slices.append(first)
        return sse.line_frames(event, seq, first, stop)

    fanout = Fanout(js, names, sse.frames_for, limits, frame_lines=frame_lines)
    feed, inbox, _ = await fanout.join(JOB)
    try:
        flood = lines(1, 4 * FRAME_LINES + 1, "y" * 80)
        seq = await eventstore.publish(js, names, flood)
        items = await next_items(inbox)
        assert [item.chunk for item in items] == [b"".join(sse.frames_for(flood, seq, None))]
        assert slices == list(range(0, 4 * FRAME_LINES + 1, FRAME_LINES))
    finally:
        feed.leave(inbox)
