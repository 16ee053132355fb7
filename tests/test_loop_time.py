"""``common.looptime.within_loop_time``: a deadline on the event loop's own time, on asyncio's
loop and on uvloop. (Blocked loops: ``test_echo_probe_blocked_loop``,
``test_streamreader_connect_blocked_loop``.)"""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from jobrunner.common.looptime import within_loop_time

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


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

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        assert runner.run(run()).cancelled()


@pytest.mark.parametrize("loop", LOOPS)
def test_what_finishes_within_the_bound_gives_its_result(loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        assert runner.run(within_loop_time(_answer(), 5.0)) == "answer"


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

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        assert runner.run(run()).cancelled()
