"""The projector's event feed closes within its bound even when NATS is frozen: its close
deleted the reader's consumer (a JetStream request, 5 s with no answer) and waited for the
reader's socket to close, in series with the rest of the projector's stop.

NATS is frozen for real (SIGSTOP), for just less or longer than the bound."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from structlog.testing import capture_logs

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.projector.feed import EventFeed
from tests.freeze import freeze
from tests.history_support import logged_job, publish

BOUND = 2.0  # below the consumer delete's 5 s request timeout
DROPPED = "event feed not closed in time (nats not answering): its socket dropped"


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
        asyncio.get_running_loop().call_later(frozen_for, os.kill, pid, signal.SIGCONT)
        began = time.monotonic()
        with capture_logs() as logs:
            closing = asyncio.ensure_future(feed.close(within=BOUND))
            done, _ = await asyncio.wait({closing}, timeout=BOUND + 20)
        took = time.monotonic() - began
        assert done, "the feed's close waited for a frozen NATS past its bound"
        closing.result()
        dropped = [e for e in logs if e["event"] == DROPPED]
        assert len(dropped) == (0 if graceful else 1)
        if graceful:
            # Closed once NATS answered: its consumer deleted, not left for the server to expire.
            assert await nc.jetstream().consumers_info(stream) == []
        else:
            # The bound, and the second the dropped socket's close may take: not the 5 s
            # of the consumer's delete nobody answers.
            assert took < BOUND + 1 + 1, f"closed after {took:.1f} s"
    finally:
        os.kill(pid, signal.SIGCONT)
        await eventstore.close(nc)
