"""``common.looptime.within_loop_time``: a deadline on the event loop's own time, on asyncio's
loop and on uvloop. (Blocked loops: ``test_echo_probe_blocked_loop``, ``test_postgres_watch``,
``test_streamreader_connect_blocked_loop``.)"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from jobrunner.common import looptime
from jobrunner.common.looptime import LoopTimeout, within_loop_time
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.held_loop import loop_held_again_and_again


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


async def _one_byte_after_a_block(share: float, bound: float, answer_after: float) -> bytes:
    """A wait of one slice (``bound``) for a byte from a socket pair, with the loop blocked
    ``share`` of the slice by a callback that has the byte sent ``answer_after`` seconds later;
    the byte, once read, still takes three turns of the loop to hand over."""
    a, b = socket.socketpair()
    try:
        reader, writer = await asyncio.open_connection(sock=a)

        async def read_and_hand_over() -> bytes:
            got = await reader.read(1)
            for _ in range(3):
                await asyncio.sleep(0)
            return got

        def block_then_answer() -> None:
            time.sleep(share * bound)
            if answer_after:
                asyncio.get_running_loop().call_later(answer_after, b.send, b"x")
            else:
                b.send(b"x")

        waited = asyncio.ensure_future(within_loop_time(read_and_hand_over(), bound))
        # After the wait's first step (its slice's timer set), as both are called soon in turn.
        asyncio.get_running_loop().call_soon(block_then_answer)
        try:
            await asyncio.wait({waited}, timeout=60)  # a hang guard
            assert waited.done(), "the wait never ended"
            return waited.result()
        finally:
            waited.cancel()
            writer.close()
    finally:
        b.close()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(("share", "counted"), [(1.3, True), (1.7, False)])
def test_a_slice_late_by_more_than_half_a_slice_is_not_counted(
    monkeypatch: pytest.MonkeyPatch, loop: str, share: float, counted: bool
) -> None:
    """One slice of 0.5 s, the loop blocked 1.3 or 1.7 times the slice and the answer sent 0.1 s
    after: a slice late by 0.3 of itself (under ``LATE_SLICE``) counts and the wait is over
    before the answer; one late by 0.7 does not, and the next slice takes the answer."""
    monkeypatch.setattr(looptime, "SLICES_PER_BOUND", 1)
    outcome = _one_byte_after_a_block(share, bound=0.5, answer_after=0.1)
    if counted:
        with pytest.raises(TimeoutError):
            run_on(loop, outcome)
    else:
        assert run_on(loop, outcome) == b"x"


@pytest.mark.parametrize("loop", LOOPS)
def test_an_answer_sent_as_the_last_slice_ends_a_little_late_is_taken(
    monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """One slice of 0.5 s, the loop blocked 1.3 times it (late by less than ``LATE_SLICE``: the
    slice counts) and the answer sent at the block's end: the last slice's turn still takes
    it, three turns of the loop after it is read."""
    monkeypatch.setattr(looptime, "SLICES_PER_BOUND", 1)
    assert run_on(loop, _one_byte_after_a_block(1.3, bound=0.5, answer_after=0)) == b"x"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_wait_whose_task_someone_else_cancels_times_out(loop: str) -> None:
    """The task waited for cancelled by another: ``TimeoutError`` (no answer will come), not a
    ``CancelledError`` the caller would take for its own cancel."""

    async def run() -> BaseException | None:
        waited = asyncio.ensure_future(_never())
        waiting = asyncio.ensure_future(within_loop_time(waited, 60))
        await asyncio.sleep(0.01)
        waited.cancel()
        await asyncio.wait({waiting}, timeout=30)  # a hang guard
        assert waiting.done()
        return None if waiting.cancelled() else waiting.exception()

    assert isinstance(run_on(loop, run()), TimeoutError)


# ``LoopTimeout``: a block bounded on the loop's own time, as ``asyncio.timeout`` bounds one.


@pytest.mark.parametrize("loop", LOOPS)
def test_a_block_that_never_finishes_ends_in_timeout_error(loop: str) -> None:
    """A block waiting for ever, bounded 0.05 s: ``TimeoutError`` out of the ``async with``,
    the bound marked expired."""

    async def run() -> bool:
        with pytest.raises(TimeoutError):
            async with LoopTimeout(0.05) as bound:
                await _never()
        return bound.expired()

    assert run_on(loop, run())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_block_that_finishes_within_the_bound_is_not_touched(loop: str) -> None:
    async def run() -> tuple[str, bool]:
        async with LoopTimeout(5.0) as bound:
            answer = await _answer()
        await asyncio.sleep(0.01)  # its counting, had it been left running, could end nothing
        return answer, bound.expired()

    assert run_on(loop, run()) == ("answer", False)


@pytest.mark.parametrize("loop", LOOPS)
def test_time_the_loop_was_blocked_does_not_count_against_a_block(loop: str) -> None:
    """A block of 0.5 s needing 0.15 s of the loop, which other work blocks for 0.75 s 0.05 s
    in: it finishes (on wall time it would have timed out)."""

    async def run() -> str:
        async with LoopTimeout(0.5):
            asyncio.get_running_loop().call_later(0.05, time.sleep, 0.75)
            await asyncio.sleep(0.15)
            return "finished"

    assert run_on(loop, run()) == "finished"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_bound_started_mid_block_counts_from_its_start(loop: str) -> None:
    """``LoopTimeout(None)`` bounds nothing until ``start``: 0.2 s waited before the start of
    a 0.1 s bound do not count; once started, the block ends after it."""

    async def run() -> float:
        loop_ = asyncio.get_running_loop()
        started: list[float] = []

        async def bounded_after_a_while() -> None:
            async with LoopTimeout(None) as bound:
                await asyncio.sleep(0.2)
                started.append(loop_.time())
                bound.start(0.1)
                await _never()

        with pytest.raises(TimeoutError):
            await bounded_after_a_while()
        return loop_.time() - started[0]

    assert run_on(loop, run()) >= 0.1


@pytest.mark.parametrize("loop", LOOPS)
def test_a_caller_cancelled_inside_a_bound_block_is_cancelled_not_timed_out(loop: str) -> None:
    async def run() -> asyncio.Task[None]:
        async def bounded() -> None:
            async with LoopTimeout(60):
                await _never()

        task = asyncio.ensure_future(bounded())
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.wait({task}, timeout=30)  # a hang guard
        return task

    assert run_on(loop, run()).cancelled()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_block_on_a_loop_held_again_and_again_ends_within_twice_its_bound(loop: str) -> None:
    """A block waiting for ever, bounded 0.5 s, its loop held 0.3 s every 0.02 s (every slice
    late, none counted): ``TimeoutError`` after at most twice the bound of wall time plus the
    hold under way, where the loop's own time alone would take some 20 holds (6 s)."""
    bound, hold, free = 0.5, 0.3, 0.02
    late = 2.5  # a bound on the machine's own slowness, not a timing of the code

    async def run() -> float:
        started = time.monotonic()
        with loop_held_again_and_again(hold, free):
            try:
                async with LoopTimeout(bound):
                    await asyncio.wait_for(_never(), 30)  # a hang guard
            except TimeoutError:
                return time.monotonic() - started
        raise AssertionError("the block was not ended")

    assert run_on(loop, run()) < looptime.MOST_BOUNDS * bound + hold + late


@pytest.mark.parametrize("loop", LOOPS)
def test_a_block_ended_by_the_wall_time_backstop_may_clean_up_at_leisure(loop: str) -> None:
    """A block bounded 0.1 s, its loop blocked 0.25 s (past twice the bound: the wall-time
    backstop ends it), whose clean-up then awaits 1 s (its bound on the loop's own time is
    spent meanwhile): ``TimeoutError``, and no task the bound started ends in an error."""

    async def run() -> list[BaseException]:
        loop_ = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []

        def recorded(
            loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
        ) -> asyncio.Task[Any]:
            tasks.append(asyncio.Task(coro, loop=loop, **kwargs))
            return tasks[-1]

        async def bounded_with_a_slow_clean_up() -> None:
            async with LoopTimeout(0.1):
                loop_.call_later(0.005, time.sleep, 0.25)
                try:
                    await _never()
                finally:
                    await asyncio.sleep(1.0)  # a clean-up: a close, a release

        loop_.set_task_factory(recorded)
        with pytest.raises(TimeoutError):
            await bounded_with_a_slow_clean_up()
        await asyncio.sleep(0)
        assert tasks, "the bound started no task: the test sees nothing"
        return [
            error
            for task in tasks
            if task.done() and not task.cancelled() and (error := task.exception()) is not None
        ]

    assert run_on(loop, run()) == []
