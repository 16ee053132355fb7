"""NATS connections of their own for the readers of job streams (no noisy neighbour).

A push consumer may have up to 32 MiB on its way to the client before the server waits for a
flow-control reply (nats-server's ``JsFlowControlMaxPending``). On one shared connection, a job
that floods its output while its viewer reads slower than it prints (an API busy on two shared
cores) puts that much data into the socket ahead of every other job's messages: a quiet job's
line then waits seconds behind the flood (measured: 3.5 s at p99 before the API had parsed it).
Messages of one connection arrive in order, so no scheduling inside the API can pass them.

So each reader (a job's live feed, a viewer's history read) gets a connection of its own: a
flood then backs up on its own socket, and the event loop reads every socket in turn. The API's
requests (publishes, key-value reads, consumer info) keep the service's main connection.

Connections are kept for the next reader rather than opened per reader (a handshake each, about
1.5 ms of CPU on the loaded machine): a viewer joining a job would otherwise wait for one. Their
number is capped: a thousand viewers joining at once (each reading the job's past first) share
the capped connections, each new reader the one with the fewest readers, rather than open a
thousand. A connection that was handed back after its reader unsubscribed may still receive that
subscription's last messages in flight: nats-py drops them (no such subscription), a cost of
parsing only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobrunner.common import eventstore

log = structlog.get_logger()

# Idle connections kept for the next reader; more are closed when handed back (a burst of
# viewers' history reads opens up to MAX_CONNECTIONS at once, then settles to this).
KEEP_IDLE = 8
# Connections open at most; beyond, readers share them (each one a reader more than alone).
MAX_CONNECTIONS = 32

Connect = Callable[[], Awaitable[NATS]]


class ReaderConnections:
    """Lends a connection per reader; keeps up to ``keep_idle`` of them for the next ones."""

    def __init__(
        self, connect: Connect, keep_idle: int = KEEP_IDLE, max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self._connect = connect
        self._keep_idle = keep_idle
        self._max = max(1, max_connections)
        self._idle: list[NATS] = []
        self._lent: dict[NATS, int] = {}  # each lent connection's readers
        self._opening = 0  # connects under way (counted against the cap)
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.opened = 0  # connections opened so far (a figure for tests and metrics)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def lent(self) -> int:
        """Connections with at least one reader."""
        return len(self._lent)

    async def warm(self, count: int = 1) -> None:
        """Open ``count`` connections ahead of the first readers (a job's first viewer then
        waits for no handshake)."""
        while len(self._idle) < count and not self._closed:
            self._idle.append(await self._open())

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[JetStreamContext]:
        """A JetStream context on a connection no other reader uses until this one is done."""
        if self._closed:
            raise RuntimeError("the reader connections are closed")
        nc = await self._take()
        self._lent[nc] = self._lent.get(nc, 0) + 1
        try:
            yield nc.jetstream()
        finally:
            readers = self._lent.pop(nc, 1) - 1
            if readers:
                self._lent[nc] = readers
            else:
                self._give_back(nc)

    async def close(self, within: float | None = None) -> None:
        """Close every connection, lent ones included (their readers end with an error), all
        at once, in ``within`` seconds at most: one closed earlier and still closing, with a
        bound of its own, is left to it."""
        self._closed = True
        every = [*self._idle, *self._lent]
        self._idle.clear()
        for nc in every:
            self._close_later(nc, within)
        if self._closing:
            await asyncio.wait(self._closing, timeout=within)  # None: each close's own bound

    async def _take(self) -> NATS:
        while self._idle:
            nc = self._idle.pop()
            if nc.is_connected:
                return nc
            # Reconnecting (NATS away): a fresh one fails or succeeds on its own deadline.
            self._close_later(nc)
        if self._lent and len(self._lent) + self._opening >= self._max:
            return min(self._lent, key=self._lent.__getitem__)
        return await self._open()

    async def _open(self) -> NATS:
        self._opening += 1
        try:
            nc = await self._connect()
        finally:
            self._opening -= 1
        self.opened += 1
        return nc

    def _give_back(self, nc: NATS) -> None:
        if not self._closed and nc.is_connected and len(self._idle) < self._keep_idle:
            self._idle.append(nc)
        else:
            self._close_later(nc)

    def _close_later(self, nc: NATS, within: float | None = None) -> None:
        # Handed back from a cancelled reader too: the close must not wait in its ``finally``.
        task = asyncio.create_task(self._close(nc, within))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(nc: NATS, within: float | None) -> None:
        with contextlib.suppress(Exception):
            if not nc.is_closed:
                await eventstore.close(nc, within)
