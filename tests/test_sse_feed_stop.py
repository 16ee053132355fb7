"""A job's feed that nobody watches any more ends, even when its cancel is lost as it starts.

A feed starts with a JetStream request (the stream's end) and its consumer's creation; its
only client may leave meanwhile, and the feed is then cancelled. 3.11's wait_for loses a cancel
that comes with the request's reply: the feed went on, created its consumer and read the job's
events for nobody until the job ended. Here the request is real and the cancel is lost after
it."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext

from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import Fanout, Limits
from tests.lostcancel import LosingACancel


async def test_a_feed_whose_cancel_was_lost_as_it_started_ends_when_its_client_left(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = Names(settings.prefix)
    limits = Limits(keepalive=30, client_bytes=1 << 20, total_bytes=8 << 20, history_idle=5)
    fanout = Fanout(js, names, sse.frames_for, limits)
    consumers_before = (await js.stream_info(names.stream)).state.consumer_count
    losing = LosingACancel(js.stream_info)
    monkeypatch.setattr(js, "stream_info", losing)
    joining = asyncio.create_task(fanout.join("left-early"))
    await asyncio.wait_for(losing.reached.wait(), 30)  # the feed has the stream's end
    feed = fanout.feeds["left-early"]
    assert feed.task is not None
    joining.cancel()  # the client goes away while its feed starts: the feed is cancelled
    await asyncio.gather(joining, return_exceptions=True)
    try:
        done, _ = await asyncio.wait({feed.task}, timeout=10)
        assert losing.lost == 1
        assert done, "a feed nobody watches read on"
    finally:
        feed.task.cancel()  # (not lost again: the test loses one)
        await asyncio.wait({feed.task}, timeout=10)
    monkeypatch.undo()
    assert (await js.stream_info(names.stream)).state.consumer_count == consumers_before
