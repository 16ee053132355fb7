"""Two awaitables at once, with nothing of them left running once the call has returned."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

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
        await _cancelled_and_ended(tasks)
        raise
    return a, b


async def _cancelled_and_ended(tasks: tuple[asyncio.Future[Any], ...]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, even if the caller is cancelled
    meanwhile: it then gets the cancel, once they have."""
    caller = asyncio.current_task()
    assert caller is not None  # an await runs in a task
    cancels = caller.cancelling()
    for task in tasks:
        task.cancel()
    while True:
        try:
            # gather has read whatever the other one ends in: no "exception never retrieved".
            await asyncio.wait(tasks)
            break
        except asyncio.CancelledError:
            # Passed on: one may have swallowed its cancel (3.11's wait_for can) and run on.
            for task in tasks:
                task.cancel()  # no-op once it has ended
    if caller.cancelling() > cancels:
        # Cancelled while waiting: that wins over the error that began the wait.
        raise asyncio.CancelledError
