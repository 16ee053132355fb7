"""A service's NATS connection closes within its bound even when NATS is frozen with what the
service published still unsent: every service's stop waited for ever.

Once its flush failed, nats-py's close writes what it still holds and waits for the socket to
take it (its drain), then for the socket to close, with no bound; a frozen server takes nothing
once the kernel's buffers are full. Here NATS is frozen for real with a few MB unsent, for just
less or longer than ``CLOSE_SECONDS``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS

from jobrunner.common import eventstore
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze, thaw
from tests.tools.frozen_close import close_while_frozen

BOUND = 3.0  # CLOSE_SECONDS here
FLUSH_SECONDS = 2.0  # eventstore.close's flush, before the bound
UNSENT = 1024 * 1024  # what the socket would not take: the kernel's buffers are full
DROPPED = "nats took nothing more: connection dropped"


@pytest.fixture
async def nc(own_nats: EmbeddedNats) -> AsyncIterator[NATS]:
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1)
    try:
        yield nc
    finally:
        assert own_nats.proc is not None
        thaw(own_nats.proc.pid)
        if not nc.is_closed:
            await nc.close()


def unsent_bytes(nc: NATS) -> int:
    """What nats-py holds and what its socket's transport buffers, not taken by the kernel."""
    writer = nc._transport._io_writer  # type: ignore[union-attr]
    return int(nc._pending_data_size + writer.transport.get_write_buffer_size())


async def publish_until_unsent(nc: NATS) -> None:
    """Publish to the frozen server until the kernel takes no more."""
    payload = b"x" * 60_000
    deadline = time.monotonic() + 60
    while unsent_bytes(nc) < UNSENT:
        assert time.monotonic() < deadline, "the socket kept taking what was published"
        # A publish past nats-py's pending limit waits for its flusher, which the frozen
        # server holds: it is left, its message stays pending.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nc.publish("close.frozen", payload), 0.5)


@pytest.mark.parametrize(
    ("frozen_past_the_flush", "graceful"),
    [(BOUND - 1.5, True), (BOUND + 60, False)],
    ids=["freeze-within-the-bound", "freeze-past-the-bound"],
)
async def test_a_connection_closes_within_its_bound_while_nats_is_frozen(
    nc: NATS,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    frozen_past_the_flush: float,
    graceful: bool,
) -> None:
    """Frozen 1.5 s into the close's bound, NATS takes what was left and the connection closes;
    frozen past it, the connection is dropped after it, said in the log, and the stop goes on."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    monkeypatch.setattr(eventstore, "CLOSE_SECONDS", BOUND)
    freeze(pid)
    await publish_until_unsent(nc)
    closed = await close_while_frozen(
        eventstore.close(nc),
        "the close",
        patience=FLUSH_SECONDS + BOUND + 20,
        thaw_in=FLUSH_SECONDS + frozen_past_the_flush,
        pids=[pid],
    )
    assert nc.is_closed
    assert closed.logged(DROPPED) == (0 if graceful else 1)


async def test_a_close_whose_flush_cannot_even_be_queued_ends_within_its_bounds(
    nc: NATS, own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NATS frozen with MBs unsent holds nats-py's flusher; subscribes made meanwhile fill its
    queue (1,024 places), where the close's flush must queue its ping first, a wait nats-py does
    not bound: the flush is left after its bound, and the close goes on to its own."""
    assert own_nats.proc is not None
    monkeypatch.setattr(eventstore, "CLOSE_SECONDS", BOUND)
    freeze(own_nats.proc.pid)
    await publish_until_unsent(nc)
    subscribing = [asyncio.ensure_future(nc.subscribe(f"close.queued.{i}")) for i in range(1100)]
    flushes = nc._flush_queue
    assert flushes is not None  # made at the connect
    try:
        async with asyncio.timeout(30):
            while flushes.qsize() < flushes.maxsize:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        closed = await close_while_frozen(
            eventstore.close(nc),
            "the close, queueing its flush,",
            patience=FLUSH_SECONDS + 1 + BOUND + 20,
        )
        assert nc.is_closed
        assert closed.logged(DROPPED) == 1
    finally:
        for task in subscribing:
            task.cancel()
        await asyncio.wait(subscribing, timeout=10)


WITHIN = 4.0  # what a service's stop has left for the close (eventstore.close's within)


@pytest.mark.parametrize(
    ("frozen_for", "graceful"),
    [(WITHIN - 1, True), (WITHIN + 60, False)],
    ids=["freeze-within-the-deadline", "freeze-past-the-deadline"],
)
async def test_a_close_ends_within_what_the_stop_left_it_while_nats_is_frozen(
    nc: NATS, own_nats: EmbeddedNats, frozen_for: float, graceful: bool
) -> None:
    """Given 4 s of a stop (less than its own bounds, 2 + 1 + 5 s), the close flushes in half of
    them and closes in the rest: NATS thawed 1 s before their end, it closes gracefully; frozen
    past them, the connection is dropped at their end, said in the log."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    freeze(pid)
    await publish_until_unsent(nc)
    closed = await close_while_frozen(
        eventstore.close(nc, within=WITHIN),
        "the close",
        patience=WITHIN + 20,
        thaw_in=frozen_for,
        pids=[pid],
    )
    assert nc.is_closed
    assert closed.logged(DROPPED) == (0 if graceful else 1)
    if not graceful:
        # Its deadline, and the moment the dropped socket's close takes: not its own 8 s.
        assert closed.took < WITHIN + 2, f"closed after {closed.took:.1f} s"
