"""How the projector waits out an outage (Postgres restarting, NATS away): the same thing is
tried again after a growing pause, cut short by a stop."""

from __future__ import annotations

import asyncio
import contextlib

RETRY_PAUSE_MAX = 5.0  # seconds, at most, before what met an outage is tried again


def pause_after(failures: int) -> float:
    """The pause after ``failures`` failures in a row: 0.2 s, doubling, at most RETRY_PAUSE_MAX."""
    return min(0.1 * 2.0**failures, RETRY_PAUSE_MAX)


async def wait_or_stop(stop: asyncio.Event, pause: float) -> bool:
    """Wait ``pause`` seconds or until ``stop``; returns whether stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), pause)
    return stop.is_set()
