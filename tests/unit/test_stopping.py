"""Work that a service's stop cuts short (``common.stopping``: unless_stopped, Deadline)."""

from __future__ import annotations

import asyncio

import pytest

from jobrunner.common.stopping import Deadline, unless_stopped


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


def test_a_step_waits_its_own_bound_or_what_is_left_of_the_deadline() -> None:
    """A step with a shorter bound than the deadline keeps it; one with a longer gets the rest."""
    deadline = Deadline(10.0)
    assert deadline.left(3.0) == 3.0
    assert 9.0 < deadline.left(30.0) <= 10.0
    assert 9.0 < deadline.left() <= 10.0


def test_a_deadline_passed_leaves_nothing() -> None:
    """Past its end (or given none), a step waits not at all: never a negative wait."""
    assert Deadline(0.0).left(5.0) == 0.0
    assert Deadline(-3.0).left() == 0.0


def test_keeping_leaves_the_later_step_its_seconds_or_half() -> None:
    """What runs before the connections' close ends early enough for it: its seconds, or
    half of the deadline when that is shorter than twice them."""
    assert 6.0 < Deadline(10.0).keeping(3.0).left() <= 7.0
    assert 0.5 < Deadline(2.0).keeping(3.0).left() <= 1.0
