"""A deadline on the event loop's own time: the time the loop was blocked by other callbacks does
not count against it.

A wait for an answer from a socket, sharing its loop with other work, may have that answer in
the socket already, or half-way through the steps that hand it over (the loop's poll, a library's
read loop, a subscription's task), when a plain timeout's timer fires after a long callback: the
timer comes first (under uvloop due timers even run before the poll), and the answer that came is
counted missing. So the bound is waited in slices, and a slice whose timer fires more than
``LATE_SLICE`` of a slice late (the loop was blocked meanwhile) does not count: the next slice
gives the loop its turns to hand over what came. Simpler than looking into a library's buffers,
and true of any number of steps between the socket and the waiter.

An answer that comes as the last slice runs out, the loop blocked past its end by less than
``LATE_SLICE`` of it (a block that looks like a timer's jitter), still gets one short turn of the
loop (``TIMER_JITTER``) to be handed over. A peer really silent is given up after the bound plus
the slices' small lateness and that turn, and a slice more for each block of the loop, but never
after more than ``MOST_BOUNDS`` bounds' worth of slices (a loop blocked again and again: its
blocked time then counts).

``within_loop_time`` bounds one awaitable; ``LoopTimeout`` bounds a block (``async with``), as
``asyncio.timeout`` does, for work that is not one awaitable (a read that acquires, queries and
releases; a request whose deadline starts mid-way). It also gives up after ``MOST_BOUNDS``
bounds of wall time, however often the loop is blocked: a peer answered that late is as bad
as one that never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

# The bound is waited in this many slices; one that ends later than this share of a slice past
# its time tells a loop blocked meanwhile and does not count. Well above a loaded machine's
# jitter of a timer (milliseconds, against 150 ms at the API's 3 s NATS bound); a slice too many
# costs only a later verdict on a silent peer.
SLICES_PER_BOUND = 10
LATE_SLICE = 0.5
# A loop blocked again and again would have every slice late and the wait never end: past this
# many bounds' worth of slices, counted or not, the wait gives up (blocked time counts again).
MOST_BOUNDS = 2
# Floors for a bound of next to nothing (none left: still the loop's few turns). 1 ms: uvloop
# rounds timers to whole milliseconds, so a shorter slice is not kept. 5 ms: a lateness any
# loop's timer may have without being blocked. Without them a slice of 0 s would never be on time.
SHORTEST_SLICE = 0.001
TIMER_JITTER = 0.005


async def within_loop_time(awaitable: Awaitable[T], seconds: float) -> T:
    """``awaitable``'s result, or ``TimeoutError`` once it has not finished within ``seconds``
    of the loop's own time (it is then cancelled, and not waited for: a library that swallows
    the cancel must not hold the caller). ``awaitable`` cancelled by another also gives
    ``TimeoutError``: no answer will come, and a ``CancelledError`` would read as the caller's
    own cancel."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(awaitable)
    step = max(seconds / SLICES_PER_BOUND, SHORTEST_SLICE)
    late = max(step * LATE_SLICE, TIMER_JITTER)
    counted = 0
    try:
        for _ in range(MOST_BOUNDS * SLICES_PER_BOUND):
            started = loop.time()
            await asyncio.wait({task}, timeout=step)
            if task.done():
                return _outcome(task)
            if loop.time() - started <= step + late:
                counted += 1
                if counted == SLICES_PER_BOUND:
                    break
        # One short turn more: an answer that came as the last slice ran out, with the loop
        # blocked past its end by less than a late slice's share, is handed over now rather
        # than counted missing.
        await asyncio.wait({task}, timeout=TIMER_JITTER)
        if task.done():
            return _outcome(task)
        raise TimeoutError
    finally:
        if not task.done():
            task.cancel()
            # Not awaited: an error it ends with after all is read here, not logged as never
            # retrieved.
            task.add_done_callback(lambda ended: ended.cancelled() or ended.exception())


def _outcome(task: asyncio.Future[T]) -> T:
    if task.cancelled():
        raise TimeoutError
    return task.result()


class LoopTimeout:
    """``async with LoopTimeout(seconds)``: the block is cancelled, and ``TimeoutError`` raised
    from it, once it has run ``seconds`` of the loop's own time (as ``within_loop_time`` counts
    it), or ``MOST_BOUNDS`` times ``seconds`` of wall time, whichever comes first.
    ``LoopTimeout(None)`` bounds nothing until ``start``. ``asyncio.timeout``'s cancel and its
    ``TimeoutError`` do the ending: only when it happens is decided here."""

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._wall = asyncio.timeout(None)
        self._counting: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopTimeout:
        await self._wall.__aenter__()
        if self._seconds is not None:
            self.start(self._seconds)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._counting is not None:
            self._counting.cancel()
        await self._wall.__aexit__(exc_type, exc, traceback)

    def start(self, seconds: float) -> None:
        """The bound of ``seconds`` starts now (again, if it had started: the time spent before
        is forgotten)."""
        loop = asyncio.get_running_loop()
        if self._counting is not None:
            self._counting.cancel()
        self._wall.reschedule(loop.time() + seconds * MOST_BOUNDS)
        self._counting = loop.create_task(self._end_when_spent(seconds))

    async def _end_when_spent(self, seconds: float) -> None:
        # A future nothing sets: within_loop_time then only counts the loop's own time.
        with contextlib.suppress(TimeoutError):
            await within_loop_time(asyncio.get_running_loop().create_future(), seconds)
        # The wall-time backstop may have ended the block already, its clean-up still awaiting:
        # the block is being ended, and a timeout expiring cannot be rescheduled.
        if not self._wall.expired():
            self._wall.reschedule(asyncio.get_running_loop().time())  # asyncio's cancel, now

    def expired(self) -> bool:
        """Whether the bound ended the block (as ``asyncio.Timeout.expired``)."""
        return self._wall.expired()

    def when(self) -> float | None:
        """The loop time by which the block is ended at the latest: the wall-time backstop
        (the bound on the loop's own time may end it sooner; it is never later). None before
        ``start``."""
        return self._wall.when()
