"""A projector stopped while its event feed cannot open (NATS frozen or away as it starts to
read, after its checkpoint was read) ends within its stop: the feed's tries to open end on the
stop. They went on until NATS answered again, and the stop waited for them, for ever if NATS
never came back (until `jobrunner up` SIGKILLed the projector).

NATS is the test's own, frozen for real (SIGSTOP); the projector runs in the test's process."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.projector import service
from jobrunner.services.projector.feed import EventFeed
from tests.freeze import freeze, thaw

STOP_SECONDS = 1.5
# What the stop may take: the open under way (its request timeout, 5 s at most), the stop's
# own bound, and a loaded machine's room.
ENDS_WITHIN = 5.0 + STOP_SECONDS + 5.0


async def test_a_projector_stopped_while_its_feed_cannot_open_ends(
    settings: Settings, own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS frozen as the projector's feed begins to open, the projector stopped: it ends within
    its bound with NATS still frozen, not when NATS thaws."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    real_start = EventFeed.start
    starting = asyncio.Event()

    async def start_on_a_frozen_nats(self: EventFeed, *args: Any, **kwargs: Any) -> Any:
        freeze(pid)
        starting.set()
        return await real_start(self, *args, **kwargs)

    monkeypatch.setattr(EventFeed, "start", start_on_a_frozen_nats)
    private = msgspec.structs.replace(settings, nats_url=own_nats.url, stop_seconds=STOP_SECONDS)
    stop = asyncio.Event()
    projector = asyncio.create_task(service.run_projector(private, stop))
    try:
        await asyncio.wait_for(starting.wait(), 60)
        stop.set()
        done, _ = await asyncio.wait({projector}, timeout=ENDS_WITHIN)
        assert done, "the projector's stop waited for its feed to open on a frozen NATS"
        assert projector.exception() is None
    finally:
        thaw(pid)
        stop.set()
        if not projector.done():
            projector.cancel()
            await asyncio.wait({projector}, timeout=30)


# nats_connect_timeout_seconds in the next test: what an open under way waits on a frozen NATS
# (its INFO, per server). The stop must end the open long before it.
CONNECT_TIMEOUT = 60.0


async def test_a_stop_during_the_feeds_open_ends_the_open(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS frozen while the feed's reader waits for the server's first line, then the stop:
    the feed's start says not opened at once, not after the open's connect timeout (60 s here;
    the stop used to wait for it)."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    private = msgspec.structs.replace(
        settings, nats_url=own_nats.url, nats_connect_timeout_seconds=CONNECT_TIMEOUT
    )
    nc = await eventstore.connect(private, "projector")
    try:
        js = nc.jetstream()
        names = Names(private.prefix)
        await eventstore.ensure_topology(js, names, private)
        feed = EventFeed(js, names, private, name="projector")
        stop = asyncio.Event()
        freeze(pid)
        starting = asyncio.create_task(feed.start(1, stop))
        async with asyncio.timeout(30):  # the reader's socket made: the open waits for INFO
            while feed._reader._writer is None:
                assert not starting.done(), starting
                await asyncio.sleep(0.01)
        stop.set()
        async with asyncio.timeout(CONNECT_TIMEOUT / 2):
            assert await starting is False
    finally:
        thaw(pid)
        await eventstore.close(nc)
