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

from jobrunner.common.looptime import within_loop_time


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
        """Did a new counter come back within ``within`` seconds of the loop's own time? The
        probe shares its loop with the API's or the runner's work: time the loop spent blocked
        by others does not count (``common.looptime``), so an echo that came during a long
        callback is not said missing before nats-py has had the turns to hand it over. The
        publish itself is bounded on wall time (a plain timeout): a loop blocked while it waits
        to go out counts against the bound."""
        self._sent += 1
        self._came_back.clear()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # The publish in this task, under a plain timeout: one while reconnecting is only
            # buffered, and a full flusher queue makes it wait; a cancel that nats-py swallows
            # there holds this task, not one left behind (``bulk.BulkLane.close`` bounds it).
            async with asyncio.timeout(within):
                await self._nc.publish(self._subject, str(self._sent).encode())
            # The rest of the bound for the echo (none left: still the loop's few turns).
            left = max(0.0, within - (loop.time() - started))
            await within_loop_time(self._came_back.wait(), left)
        except (nats.errors.Error, TimeoutError, ConnectionError):
            # An echo heard as the bound ran out (its callback run, the wait's task not yet).
            return self._came_back.is_set()
        return True

    async def _heard(self, msg: Msg) -> None:
        if msg.data == str(self._sent).encode():
            self._came_back.set()
        # else an older round's counter, come back after that round gave up: nothing to say.
