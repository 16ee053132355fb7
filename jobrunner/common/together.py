"""Two awaitables at once, with nothing of them left running once the call has returned."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

A = TypeVar("A")
B = TypeVar("B")


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """``asyncio.gather(first, second)``, except that when one fails the other is cancelled and
    waited for before the error is raised: gather raises at once and leaves it running, a read
    still in flight after its caller has moved on (or stopped). The error raised is the failing
    one's own, not the ``ExceptionGroup`` a ``TaskGroup`` raises: callers tell NATS errors apart
    by their type (``retry.is_transient``)."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        a, b = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        # gather has read whatever the other one ends in: no "exception never retrieved".
        await asyncio.wait(tasks)
        raise
    return a, b
