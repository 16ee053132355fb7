"""Work that a service's stop cuts short."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def unless_stopped(work: Awaitable[T], stop: asyncio.Event | None) -> T | None:
    """``work``'s result (or its exception), or None once ``stop`` is set first: ``work`` is
    then cancelled, as it is when the caller itself is cancelled meanwhile (a semaphore's
    ``acquire`` left running would take a unit no one gives back)."""
    if stop is None:
        return await work
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
