"""Does NATS read what a connection writes? A message the connection sends to itself through the
server, and whether it comes back within a bound.

A message on a connection comes back once the server has read everything written before it, as
a PING's PONG does. Not nats-py's ``flush`` (a PING) all the same: a flush that times out leaves
its cancelled future in nats-py's queue of PONG waiters, and the PONG that comes after a stall
then fails in its read loop (``InvalidStateError``), which stops reading the connection for good.
Nor a request the server answers "no responders": any subscriber on a matching wildcard (``nats
sub '>'``, a monitoring tap) takes it and answers nothing. Each round publishes a counter and
waits for that counter; an older one that comes back late is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

# The bound is waited in this many slices; one that ends later than this share of a slice past
# its time tells a loop blocked meanwhile and does not count (``EchoProbe._waited_on_time``).
# Well above a loaded machine's jitter of a timer (milliseconds, against 150 ms at the API's
# 3 s bound); a slice too many costs only a later verdict on a silent NATS.
SLICES_PER_BOUND = 10
LATE_SLICE = 0.5


class EchoProbe:
    """Rounds of a counter sent to ``subject`` (this probe's alone) and heard back."""

    def __init__(self, nc: NATS, subject: str) -> None:
        self._nc = nc
        self._subject = subject
        self._sub: Subscription | None = None
        self._sent = 0  # the counter of the round in flight
        self._came_back = asyncio.Event()

    async def open(self) -> None:
        """Subscribe (nats-py subscribes again by itself after a reconnect; while reconnecting
        the SUB is only buffered). Raises nats-py's error on a closed connection."""
        self._sub = await self._nc.subscribe(self._subject, cb=self._heard)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    async def came_back(self, within: float) -> bool:
        """Did a new counter come back within ``within`` seconds of the loop's own time (time
        it spent blocked by others' callbacks not counted: ``_waited_on_time``)?"""
        self._sent += 1
        self._came_back.clear()
        try:
            # The publish under the whole bound: one while reconnecting is only buffered, and
            # a full flusher queue makes it wait.
            async with asyncio.timeout(within):
                await self._nc.publish(self._subject, str(self._sent).encode())
        except (nats.errors.Error, TimeoutError, ConnectionError):
            return False
        return await self._waited_on_time(within)

    async def _waited_on_time(self, within: float) -> bool:
        """Wait for the echo in slices, and count only the slices the loop kept on time.

        The probe shares its loop with the API's or the runner's work. One held up past the
        bound (a long callback just after the send) may have the echo waiting in its socket,
        or already inside nats-py, when the bound's timer fires: the echo still has to pass
        the loop's poll, nats-py's read loop and the subscription's task (several turns, and
        under uvloop due timers run before the poll), and a single timeout at the bound lands
        first, on both loops. So the bound counts only time the loop was free to read: a slice
        whose timer fired late (by more than ``LATE_SLICE``: the loop was blocked meanwhile)
        does not count, and the next slice gives the loop its turns to hand over what came.
        Simpler than looking into nats-py's buffers, and true of any step between socket and
        callback. An echo that came during a block is so not counted missing, save one that
        came in the last slice with the loop blocked past that slice's end by less than
        ``LATE_SLICE`` of it: an echo about as late as the bound, whose block looks like
        jitter. A NATS really silent is said so after the bound plus the slices' small
        lateness (and a slice more for each block of the loop)."""
        loop = asyncio.get_running_loop()
        step = within / SLICES_PER_BOUND
        counted = 0
        while counted < SLICES_PER_BOUND:
            started = loop.time()
            # The event checked after the wait too: a timeout due in the same turn as the
            # echo's callback cancels the wait of an event already set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(step):
                    await self._came_back.wait()
            if self._came_back.is_set():
                return True
            if loop.time() - started <= step * (1 + LATE_SLICE):
                counted += 1
        return False

    async def _heard(self, msg: Msg) -> None:
        if msg.data == str(self._sent).encode():
            self._came_back.set()
        # else an older round's counter, come back after that round gave up: nothing to say.
