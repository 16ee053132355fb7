"""``stopping.wait_within``: a stop waits for its tasks within a bound, then leaves (or cancels)
what is still running, and says so."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from structlog.testing import capture_logs

from jobrunner.common.stopping import NAMES_LOGGED_MOST, wait_within

LEFT = "tasks did not end on their stop: left running"
# Long enough for a task that ends at once, on a loaded machine; the tasks that do not end
# wait on an event no one sets, so the bound's length is never what a test measures.
BOUND = 2.0


async def _never(started: asyncio.Event | None = None) -> None:
    if started is not None:
        started.set()
    await asyncio.Event().wait()


async def _swallowing_its_cancel(cancelled: asyncio.Event, release: asyncio.Event) -> None:
    """Like a call into nats-py that loses a cancel arriving as it flushes: it runs on."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.set()
    await release.wait()


async def test_tasks_that_end_in_time_leave_nothing_and_say_nothing() -> None:
    tasks = {asyncio.ensure_future(asyncio.sleep(0)) for _ in range(3)}
    with capture_logs() as logs:
        left = await wait_within(tasks, BOUND, LEFT)
    assert left == set()
    assert all(task.done() and not task.cancelled() for task in tasks)
    assert not [e for e in logs if e["event"] == LEFT]


async def test_an_empty_set_is_no_wait() -> None:
    """asyncio.wait refuses an empty set: a service with nothing running still stops."""
    assert await wait_within(set(), BOUND, LEFT) == set()


async def test_a_task_past_the_bound_is_left_running_and_said() -> None:
    """Logged, not cancelled (a stopped job's ending goes on until the process ends)."""
    ending = asyncio.ensure_future(asyncio.sleep(0))
    stuck = asyncio.create_task(_never(), name="stuck")
    with capture_logs() as logs:
        left = await wait_within({ending, stuck}, 0.05, LEFT)
    assert left == {stuck}
    await asyncio.sleep(0)
    assert not stuck.done()
    said = [e for e in logs if e["event"] == LEFT]
    assert len(said) == 1
    assert said[0]["left"] == 1
    assert said[0]["tasks"] == ["stuck"]
    assert said[0]["log_level"] == "error"
    stuck.cancel()


async def test_cancel_left_cancels_what_is_past_the_bound() -> None:
    stuck = asyncio.ensure_future(_never())
    with capture_logs() as logs:
        left = await wait_within({stuck}, 0.05, LEFT, cancel_left=True, level="warning")
    assert left == {stuck}
    with pytest.raises(asyncio.CancelledError):
        await stuck
    assert [e["log_level"] for e in logs if e["event"] == LEFT] == ["warning"]


async def test_a_task_that_swallows_its_cancel_is_not_waited_for() -> None:
    """Its cancel lost, it would hold the stop for ever: the helper returns regardless."""
    cancelled, release = asyncio.Event(), asyncio.Event()
    stubborn = asyncio.ensure_future(_swallowing_its_cancel(cancelled, release))
    await asyncio.sleep(0)  # into its wait
    left = await wait_within({stubborn}, 0.05, LEFT, cancel_left=True)
    assert left == {stubborn}
    await asyncio.wait_for(cancelled.wait(), BOUND)
    assert not stubborn.done()  # ran on past its cancel, and past the helper's return
    release.set()
    await stubborn


async def test_a_cancelled_caller_gets_its_cancel_and_touches_no_task() -> None:
    """The caller's cancel reaches the caller alone, as with asyncio.wait."""
    started = asyncio.Event()
    stuck = asyncio.ensure_future(_never(started))
    waiting = asyncio.ensure_future(wait_within({stuck}, 3600.0, LEFT, cancel_left=True))
    await asyncio.wait_for(started.wait(), BOUND)
    await asyncio.sleep(0)  # the caller into its wait
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not stuck.done()
    stuck.cancel()


async def test_errors_retrieved_silences_never_retrieved() -> None:
    """An error after the stop (NATS away) is no one's to report: not even asyncio's log."""
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        for retrieved in (True, False):

            async def failing() -> None:
                raise ConnectionError("NATS away")

            task = asyncio.ensure_future(failing())
            await wait_within({task}, BOUND, LEFT, errors_retrieved=retrieved)
            del task
            gc.collect()
            assert len(reported) == (0 if retrieved else 1)
    finally:
        loop.set_exception_handler(None)


async def test_a_big_stop_names_a_few_of_its_left_tasks_and_counts_them_all() -> None:
    """Hundreds of tasks left: the log line names ten, the named ones first, and counts all."""
    stuck = [asyncio.create_task(_never(), name=f"named-{i}") for i in range(3)]
    stuck += [asyncio.ensure_future(_never()) for _ in range(500)]  # asyncio's own names
    try:
        with capture_logs() as logs:
            await wait_within(stuck, 0.05, LEFT, cancel_left=True)
        (said,) = [e for e in logs if e["event"] == LEFT]
        assert said["left"] == 503
        assert len(said["tasks"]) == NAMES_LOGGED_MOST
        assert said["tasks"][:3] == ["named-0", "named-1", "named-2"]
    finally:
        for task in stuck:
            task.cancel()
        await asyncio.wait(stuck)
