"""Loops that run until their owner stops them end then, even when the cancel is lost in a pass.

nats-py swallows a cancel that arrives while it flushes, and Python 3.11's wait_for one that
arrives as its reply does: the call returns as if never cancelled. A loop that relied on the
cancel went on, and whoever waited for it waited for ever (the API's artifact sweeper:
tests/test_artifact_sweeper_stop.py). Here each loop's pass runs against a real NATS (and
Postgres) and the cancel is lost after it, the way those two lose it: the API's read-model watch
(its shutdown waited for ever), the ZIP download's guard keeper (the download's end waited
for ever, and the guards were kept alive with it), the projector's event feed (a lost
cancel as its reader opened again: the projector's stop waited for ever), and the projector's
lag look (a projector that failed never exited)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.js import JetStreamContext, api

from jobrunner.common import artifactstore, eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.streamreader import StreamReaderError
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import readmodelgate
from jobrunner.services.api.context import read_pool
from jobrunner.services.projector import service as projector_service
from jobrunner.services.projector.feed import EventFeed
from tests.history_support import logged_job, publish
from tests.lostcancel import CancelLostInAPause, LosingACancel

PERIOD = 0.2


async def _ends(task: asyncio.Task[Any]) -> bool:
    done, _ = await asyncio.wait({task}, timeout=10 * PERIOD + 5)
    if not done:
        task.cancel()  # (not lost again: the test only loses one)
        await asyncio.gather(task, return_exceptions=True)
    return bool(done)


async def test_the_read_model_watch_whose_cancel_was_lost_in_a_look_ends_on_close(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readmodelgate, "CURRENT_CHECK_SECONDS", PERIOD)
    monkeypatch.setattr(readmodelgate, "RECHECK_SECONDS", PERIOD)
    pool = await read_pool(settings.database_url, 60.0)
    try:
        gate = readmodelgate.ReadModelGate(
            pool, js, Names(settings.prefix), settings.projector_stuck_seconds
        )
        await gate.start()
        losing = LosingACancel(gate.check)
        monkeypatch.setattr(gate, "check", losing)
        await asyncio.wait_for(losing.reached.wait(), 30)  # a look (Postgres) has just ended
        closing = asyncio.create_task(gate.close())  # as the API's shutdown does
        ended = await _ends(closing)
        assert losing.lost == 1
        assert ended, "the read-model watch went on after the API's stop"
    finally:
        await pool.close()


async def test_the_guard_keeper_whose_cancel_was_lost_in_a_bind_ends_with_the_download(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = Names(settings.prefix)
    guards = artifactstore.ReadGuards(js, names, 0.0)
    monkeypatch.setattr(guards, "_threshold", 3 * PERIOD)  # a keep-alive every PERIOD
    await guards.add(api.ObjectInfo(name="kept", bucket=names.artifacts_bucket, nuid="kepttest"))
    losing = LosingACancel(js.pull_subscribe_bind)
    monkeypatch.setattr(js, "pull_subscribe_bind", losing)
    body_ends = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"member"
        await body_ends.wait()

    async def download() -> None:
        async for _ in guards.kept(body()):
            pass

    downloading = asyncio.create_task(download())
    await asyncio.wait_for(losing.reached.wait(), 30)  # the keeper has just bound the guard
    body_ends.set()  # the archive ends: the keeper is stopped
    ended = await _ends(downloading)
    assert losing.lost == 1
    assert ended, "the guard keeper went on after the download ended"
    guards_left = [c for c in await js.consumers_info(artifactstore.stream_name(names))]
    assert not [c for c in guards_left if c.name.startswith("guard-")]


async def test_an_event_feed_whose_cancel_was_lost_as_its_reader_opened_again_ends_on_close(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    last = await publish(settings, logged_job("feed-stop", lines=3, batch=3))
    nc = await eventstore.connect(settings, "test")
    feed = EventFeed(nc.jetstream(), Names(settings.prefix), settings, name="test")
    try:
        await feed.start(last)
        assert await feed.fetch(timeout=30)  # reading
        reader = feed._reader
        losing = LosingACancel(reader.open)
        monkeypatch.setattr(reader, "open", losing)
        assert reader._writer is not None
        reader._writer.close()  # the link drops: the feed opens its reader again
        await asyncio.wait_for(losing.reached.wait(), 30)  # opened (a real consumer, a PING)
        closing = asyncio.create_task(feed.close())  # as the projector's stop does
        ended = await _ends(closing)
        assert losing.lost == 1
        assert ended, "the event feed read on after the projector's stop"
    finally:
        await eventstore.close(nc)


async def test_a_projector_that_fails_as_its_lag_look_gets_its_reply_exits(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure (here at the read-model check) ends the projector with ``stop`` not set, and
    its lag look is cancelled as its reply comes: the lag's ``wait_for(stream_info)`` returns
    the reply (3.11), and the look must end on its own stop all the same."""
    real_stream_info = JetStreamContext.stream_info
    checking = asyncio.Event()  # the projector is at its read-model check: the lag looks alone
    replied = asyncio.Event()

    async def stream_info(self: JetStreamContext, *args: Any, **kwargs: Any) -> Any:
        info = await real_stream_info(self, *args, **kwargs)
        if checking.is_set():
            # Wakes the projector before wait_for's own wake-up: its failure's cancel of the
            # lag comes with the reply, and wait_for returns the reply instead.
            replied.set()
        return info

    async def failing(*args: Any) -> None:
        checking.set()
        await replied.wait()  # (no wait_for: its own wake-up would come after the lag's)
        raise RuntimeError("read models unusable")

    await publish(settings, logged_job("lag-stop", lines=1, batch=1))  # (the stream, to look at)
    monkeypatch.setattr(JetStreamContext, "stream_info", stream_info)
    monkeypatch.setattr(projector_service.upgrade, "ensure_current_in_place", failing)
    projecting = asyncio.create_task(projector_service.run_projector(settings, asyncio.Event()))
    ended = await _ends(projecting)
    assert replied.is_set()
    assert ended, "the projector never exited: its lag look went on"
    with pytest.raises(RuntimeError, match="read models unusable"):
        projecting.result()


async def test_an_event_feed_whose_cancel_was_lost_in_a_failed_reopen_ends_on_close(
    own_nats: EmbeddedNats, settings: Settings
) -> None:
    """NATS is down; the feed's reopen fails (a refused connection) just as close() cancels:
    3.11's wait_for(open_connection) returns the refusal instead of the cancel (its
    ``if fut.done(): return fut.result()``), so the cancel is lost and the read goes on to
    ``_before_reopening``, which polls until nats-py is connected again: close() waits for as
    long as NATS is down."""
    private = Settings(nats_url=own_nats.url, prefix=settings.prefix)
    last = await publish(private, logged_job("feed-stop-down", lines=3, batch=3))
    nc = await eventstore.connect(private, "test")
    feed = EventFeed(nc.jetstream(), Names(settings.prefix), private, name="test")
    try:
        await feed.start(last)
        assert await feed.fetch(timeout=30)
        reader = feed._reader
        real_open = reader.open
        losing = CancelLostInAPause()

        async def open_losing_a_cancel(*args: Any) -> None:
            if not losing.reached.is_set():
                await asyncio.to_thread(own_nats.stop)  # NATS killed as the reader reopens
            try:
                await real_open(*args)
            except StreamReaderError:
                await losing.pause(0.5)  # (the refusal and the cancel together)
                raise

        reader.open = open_losing_a_cancel  # type: ignore[method-assign]
        assert reader._writer is not None
        reader._writer.close()  # the link drops: the feed opens its reader again
        await asyncio.wait_for(losing.reached.wait(), 60)  # a reopen was refused
        closing = asyncio.create_task(feed.close())  # the projector's stop
        done, _ = await asyncio.wait({closing}, timeout=10)
        assert losing.lost == 1
        if not done:
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)
        assert done, "the event feed's close waited for NATS to come back"
    finally:
        await eventstore.close(nc)
