"""A NATS connection clogged while its server is frozen: nats-py's flusher stuck on a full
socket and its flush queue full (1,024 flushes asked), so that every call asking for one more
flush (an unsubscribe does) waits until NATS answers again. The unsubscribe-at-stop tests'
fault, and the bounds they hold the stops to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import pytest
from nats.aio.client import Client as NATS

from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze, thaw, thaw_later

# UNSUBSCRIBE_STOP_SECONDS in the thaw tests: room on a loaded machine either side of the thaw.
BOUND = 3.0
# The thaw tests' cases: NATS thawed 1 s into the stop (all unsubscribed) and 5 s into it (past
# the bound: the unsubscribes left to the close, and said).
THAWED_EITHER_SIDE_OF_THE_BOUND = pytest.mark.parametrize(
    ("frozen_for", "unsubscribed"),
    [(BOUND - 2, True), (BOUND + 2, False)],
    ids=["thawed-within-the-bound", "thawed-past-the-bound"],
)
# NATS frozen through the whole stop: the stop must end by its own deadline (stop_seconds, 8 s
# here), long before the thaw. Outer bounds with room for a loaded machine.
STOP_SECONDS = 8.0
STOP_ENDS_WITHIN = 20.0
STOP_GIVEN_UP_AFTER = 25.0
# Publishes in flight when NATS froze: past the socket's buffers, and more than nats-py's flush
# queue holds (1,024), so that the queue is full.
PUBLISHES = 4000
PAYLOAD = b"x" * 8000
# Past nats-py's pending_size (2 MiB) in messages of PAYLOAD's size.
PAST_PENDING_SIZE = 2 * 1024 * 1024 // len(PAYLOAD) + 20


async def clogged(nc: NATS) -> None:
    """Requests publishing on ``nc`` while NATS is frozen, then cancelled (as uvicorn's stop
    cancels open requests): their flushes are left in nats-py's queue, which stays full."""
    publishing = [
        asyncio.ensure_future(nc.publish("clog.requests", PAYLOAD)) for _ in range(PUBLISHES)
    ]
    async with asyncio.timeout(30):
        while not nc._flush_queue.full():  # type: ignore[union-attr]  # noqa: ASYNC110 - nats-py's state
            await asyncio.sleep(0.05)
    for task in publishing:
        task.cancel()
    await asyncio.wait(publishing)
    assert nc._flush_queue.full()  # type: ignore[union-attr]


@asynccontextmanager
async def frozen_and_clogged(
    server: EmbeddedNats, nc: NATS, thawed_after: float | None = None
) -> AsyncIterator[None]:
    """``server`` frozen and ``nc`` clogged (``clogged``); thawed ``thawed_after`` seconds after
    that (None: not before the end), and at the end in any case."""
    assert server.proc is not None
    pid = server.proc.pid
    freeze(pid)
    thawing: asyncio.TimerHandle | None = None
    try:
        await clogged(nc)
        if thawed_after is not None:
            thawing = thaw_later(thawed_after, pid)
        yield
    finally:
        if thawing is not None:
            thawing.cancel()
        thaw(pid)


async def ends_by_its_deadline(stop: Awaitable[object]) -> None:
    """``stop`` (a service's stop, NATS frozen throughout) is over within ``STOP_ENDS_WITHIN``,
    not at the thaw."""
    began = time.monotonic()
    await asyncio.wait_for(stop, STOP_GIVEN_UP_AFTER)
    took = time.monotonic() - began
    print(f"stop took {took:.2f} s")
    assert took < STOP_ENDS_WITHIN


async def clogged_past_pending_size(nc: NATS, filling: list[asyncio.Future[None]]) -> None:
    """``clogged``, then publishes past nats-py's pending_size (put in ``filling``, for the
    caller to cancel at its end) until one of them waits in nats-py's forced flush, which
    swallows a cancel."""
    await clogged(nc)
    filling.extend(
        asyncio.ensure_future(nc.publish("clog.more", PAYLOAD)) for _ in range(PAST_PENDING_SIZE)
    )
    await forced_flush_waiting(nc)


async def forced_flush_waiting(nc: NATS) -> None:
    """Until a publish waits in nats-py's forced flush (the pending bytes past pending_size)."""
    async with asyncio.timeout(30):
        while nc._pending_data_size <= nc._max_pending_size:  # noqa: ASYNC110 - nats-py's state
            await asyncio.sleep(0.01)
