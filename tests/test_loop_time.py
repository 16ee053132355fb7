"""``common.looptime.within_loop_time``: a deadline on the event loop's own time, on asyncio's
loop and on uvloop. (Blocked loops: ``test_echo_probe_blocked_loop``,
``test_streamreader_connect_blocked_loop``.)"""

from __future__ import annotations

import asyncio
import time

import pytest

from jobrunner.common import looptime
from jobrunner.common.looptime import within_loop_time
from tests.tools.event_loops import LOOPS, run_on


async def _never() -> None:
    await asyncio.Event().wait()


async def _answer() -> str:
    await asyncio.sleep(0)
    return "answer"


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("seconds", [0.0, 0.05])
def test_what_never_finishes_times_out_and_is_cancelled(loop: str, seconds: float) -> None:
    """A bound of nothing, or a short one, on a free loop: ``TimeoutError``, the wait cancelled
    (a bound of nothing still ends: its slices are not all late)."""

    async def run() -> asyncio.Task[None]:
        task = asyncio.ensure_future(_never())
        with pytest.raises(TimeoutError):
            await within_loop_time(task, seconds)
        await asyncio.sleep(0)
        return task

    assert run_on(loop, run()).cancelled()


@pytest.mark.parametrize("loop", LOOPS)
def test_what_finishes_within_the_bound_gives_its_result(loop: str) -> None:
    assert run_on(loop, within_loop_time(_answer(), 5.0)) == "answer"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancelled_caller_cancels_what_it_waited_for(loop: str) -> None:
    async def run() -> asyncio.Task[None]:
        waited = asyncio.ensure_future(_never())
        caller = asyncio.ensure_future(within_loop_time(waited, 60))
        await asyncio.sleep(0.01)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.sleep(0)
        return waited

    assert run_on(loop, run()).cancelled()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_loop_blocked_again_and_again_still_times_out(loop: str) -> None:
    """Every slice late (the loop blocked 1.6 slices over and over): the wait still gives up,
    after twice the bound's slices, instead of waiting forever."""
    bound = 0.5
    block = 1.6 * bound / looptime.SLICES_PER_BOUND

    async def block_again_and_again() -> None:
        while True:
            time.sleep(block)  # noqa: ASYNC251 -- the loop's block is the point
            await asyncio.sleep(0)

    async def run() -> BaseException | None:
        blocker = asyncio.ensure_future(block_again_and_again())
        waited = asyncio.ensure_future(within_loop_time(_never(), bound))
        try:
            await asyncio.wait({waited}, timeout=30)  # a hang guard, far past 20 slices
        finally:
            blocker.cancel()
            waited.cancel()
        assert waited.done(), "the wait never gave up"
        return waited.exception()

    assert isinstance(run_on(loop, run()), TimeoutError)
