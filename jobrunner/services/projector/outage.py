"""How the projector waits out an outage (Postgres restarting, NATS away): the same thing is
tried again after a growing pause, cut short by a stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

RETRY_PAUSE_MAX = 5.0  # seconds, at most, before what met an outage is tried again


def pause_after(failures: int) -> float:
    """The pause after ``failures`` failures in a row: 0.2 s, doubling, at most RETRY_PAUSE_MAX."""
    return min(0.1 * 2.0**failures, RETRY_PAUSE_MAX)


async def wait_or_stop(stop: asyncio.Event, pause: float) -> bool:
    """Wait ``pause`` seconds or until ``stop``; returns whether stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), pause)
    return stop.is_set()


async def unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """Run ``work`` until it returns (or raises), or cancel it once ``stop`` is set: None then.
    For work that may wait on others for long (a rebuild waiting for the swap lock)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return None
    return task.result()
