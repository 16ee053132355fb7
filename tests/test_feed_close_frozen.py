"""The projector's event feed closes within its bound even when NATS is frozen: its close
deleted the reader's consumer (a JetStream request, 5 s with no answer) and waited for the
reader's socket to close, in series with the rest of the projector's stop.

NATS is frozen for real (SIGSTOP), for just less or longer than the bound."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest
from structlog.testing import capture_logs

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.projector.feed import EventFeed
from tests.freeze import freeze, thaw
from tests.history_support import logged_job, publish
from tests.tools.clogged_nats import clogged_past_pending_size
from tests.tools.frozen_close import close_while_frozen

BOUND = 2.0  # below the consumer delete's 5 s request timeout
DROPPED = "event feed not closed in time (nats not answering): its socket dropped"
LEFT_RUNNING = "event feed's close left running"


@pytest.mark.parametrize(
    ("frozen_for", "graceful"),
    [(BOUND - 1.5, True), (BOUND + 30, False)],
    ids=["freeze-within-the-bound", "freeze-past-the-bound"],
)
async def test_an_event_feed_closes_within_its_bound_while_nats_is_frozen(
    settings: Settings, own_nats: EmbeddedNats, frozen_for: float, graceful: bool
) -> None:
    """Frozen half a second, the feed closes once NATS answers, its consumer deleted; frozen
    past the bound, its socket is dropped after it, said in the log, and the stop goes on."""
    private = Settings(nats_url=own_nats.url, prefix=settings.prefix)
    last = await publish(private, logged_job("feed-close-frozen", lines=3, batch=3))
    nc = await eventstore.connect(private, "test")
    feed = EventFeed(nc.jetstream(), Names(settings.prefix), private, name="test")
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    try:
        await feed.start(last)
        assert await feed.fetch(timeout=30)
        stream = Names(settings.prefix).stream
        assert len(await nc.jetstream().consumers_info(stream)) == 1  # the feed's
        freeze(pid)
        closed = await close_while_frozen(
            feed.close(within=BOUND),
            "the feed's close",
            patience=BOUND + 20,
            thaw_in=frozen_for,
            pids=[pid],
        )
        assert closed.logged(DROPPED) == (0 if graceful else 1)
        if graceful:
            # Closed once NATS answered: its consumer deleted, not left for the server to expire.
            assert await nc.jetstream().consumers_info(stream) == []
        else:
            # The bound, and the second the dropped socket's close may take: not the 5 s
            # of the consumer's delete nobody answers.
            assert closed.took < BOUND + 1 + 1, f"closed after {closed.took:.1f} s"
    finally:
        thaw(pid)
        await eventstore.close(nc)


async def test_an_event_feed_left_closing_ends_on_the_exits_cancel(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS frozen with more than 2 MiB waiting on the feed's connection: the consumer's delete
    waits in nats-py's forced flush, which swallows the close's cancel. The close returns all
    the same (its bound and the second after it), and what it left running ends on the one
    cancel a process's exit gives it (asyncio.run), with no error left unreported."""
    private = Settings(nats_url=own_nats.url, prefix=settings.prefix)
    last = await publish(private, logged_job("feed-close-clogged", lines=3, batch=3))
    nc = await eventstore.connect(private, "test")
    feed = EventFeed(nc.jetstream(), Names(settings.prefix), private, name="test")
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    loop = asyncio.get_running_loop()
    unreported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unreported.append(context))
    filling: list[asyncio.Future[None]] = []
    try:
        await feed.start(last)
        assert await feed.fetch(timeout=30)
        freeze(pid)
        await clogged_past_pending_size(nc, filling)
        before = asyncio.all_tasks()
        began = time.monotonic()
        with capture_logs() as logs:
            await asyncio.wait_for(feed.close(within=BOUND), BOUND + 20)
        took = time.monotonic() - began
        assert took < BOUND + 1 + 2, f"closed after {took:.1f} s"
        assert [e["event"] for e in logs] == [DROPPED, LEFT_RUNNING]
        await eventstore.close(nc, within=BOUND)
        left = asyncio.all_tasks() - before - set(filling)
        assert left, "nothing left running: the cancel was not swallowed, the case not met"
        for task in left:
            task.cancel()  # once, as asyncio.run does at the exit
        done, _ = await asyncio.wait(left, timeout=20)
        assert done == left, "a task left by the feed's close survived the exit's cancel"
        # Ended by that cancel, not by the consumer delete's own timeout, which ends it anyway
        # a moment later (without this, the test passed with no cancel at all).
        assert all(task.cancelled() for task in left), "the exit's cancel did not end it"
        gc.collect()
        await asyncio.sleep(0)
        assert unreported == []
    finally:
        thaw(pid)
        for publishing in filling:
            publishing.cancel()
        await eventstore.close(nc)
        loop.set_exception_handler(None)
