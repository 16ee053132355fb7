"""Work that a service's stop cuts short (``common.stopping.unless_stopped``)."""

from __future__ import annotations

import asyncio

import pytest

from jobrunner.common.stopping import unless_stopped


async def test_work_that_ends_first_gives_its_result() -> None:
    assert await unless_stopped(asyncio.sleep(0, "done"), asyncio.Event()) == "done"
    assert await unless_stopped(asyncio.sleep(0, "done"), None) == "done"


async def test_work_that_raises_raises() -> None:
    async def failing() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await unless_stopped(failing(), asyncio.Event())


async def test_a_stop_cancels_the_work_and_answers_none() -> None:
    stop = asyncio.Event()
    capacity = asyncio.Semaphore(0)
    waiting = asyncio.ensure_future(unless_stopped(capacity.acquire(), stop))
    await asyncio.sleep(0.01)
    stop.set()
    assert await waiting is None
    capacity.release()  # nobody is waiting for it any more: the unit stays free
    assert not capacity.locked()


async def test_a_cancelled_caller_leaves_no_work_behind() -> None:
    """A semaphore's acquire left running would take a unit that no one gives back."""
    capacity = asyncio.Semaphore(0)
    waiting = asyncio.ensure_future(unless_stopped(capacity.acquire(), asyncio.Event()))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    capacity.release()
    await asyncio.sleep(0.01)
    assert not capacity.locked()  # the unit was not taken by a forgotten acquire
