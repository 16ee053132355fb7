"""Work that a service's stop cuts short."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Literal, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger()

# Task names a stop's log line gives at most: a big stop leaves hundreds of tasks, most with
# asyncio's own names ("Task-1234"), which say nothing; the line counts them all (``left``).
NAMES_LOGGED_MOST = 10
_ASYNCIO_NAME = re.compile(r"Task-\d+")


class Deadline:
    """One end for a whole stop: its steps each wait at most what is left of it, so that
    bounds that hold one by one cannot add up, in series, past the supervisor's grace."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + max(0.0, seconds)

    def left(self, at_most: float = math.inf) -> float:
        """Seconds a step may wait: ``at_most`` (its own bound), or what is left if less."""
        return max(0.0, min(at_most, self._end - time.monotonic()))

    def keeping(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` before this one (half-way when less than twice that is
        left): for what must end before a later step has its time (the NATS connection's
        close, after everything that still publishes on it)."""
        left = self.left()
        return Deadline(max(left - seconds, left / 2))


async def unless_stopped(
    work: Awaitable[T],
    stop: asyncio.Event | None,
    *,
    within: float | None = None,
    what: str = "work cut short by a stop",
    on_left: Callable[[], None] | None = None,
) -> T | None:
    """``work``'s result (or its exception), or None once ``stop`` is set first: ``work`` is
    then cancelled, as it is when the caller itself is cancelled meanwhile (a semaphore's
    ``acquire`` left running would take a unit no one gives back), and waited for ``within``
    seconds at most when given: work whose cancel waits on a server that answers nothing (a
    rebuild mid-statement on a frozen Postgres) is left running past it, ``what`` said in the
    log, rather than holding the stop until the server thaws. ``on_left`` is then called to end
    it without a round trip (its connections terminated): a task left running would otherwise
    hold the process's exit, ``asyncio.Runner``'s close waiting for it without a bound."""
    if stop is None:
        return await work
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    left = False
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            if within is None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:
                left = bool(await wait_within({task}, within, f"{what}: left running"))
                if left:
                    # Its error, when it ends (a terminated connection), is the stop's.
                    task.add_done_callback(_error_retrieved)
                    if on_left is not None:
                        on_left()
    if left or task.cancelled():
        return None
    return task.result()


def _error_retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def raise_if_being_cancelled() -> None:
    """Raise ``CancelledError`` when the running task has a cancel request pending: its
    ``cancelling()`` counts the ``cancel()`` calls not ``uncancel()``ed, whether or not the
    ``CancelledError`` reached the task. nats-py catches one that arrives while it flushes
    (``Client._flush_pending``) and returns as if never cancelled, without ``uncancel()``; the
    count still says so. A loop that retries for ever asks before each retry: it would
    otherwise retry on, and the process's exit (``asyncio.run`` cancels what is left once,
    then waits for it) with it. Code that catches a cancel on purpose and means to carry on
    must ``uncancel()`` it, or this ends it at its next retry."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less once ``stop`` is set: a loop's pause between its rounds."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def end_loop(
    task: asyncio.Task[None], stop: asyncio.Event, within: float | None = None
) -> bool:
    """End ``task``, a loop run ``while not stop.is_set()`` (its pauses ``pause(stop, ...)``),
    and wait for it: at most ``within`` seconds when given; whether it ended. ``stop`` is set
    before the cancel, for a cancel alone can be lost: nats-py swallows one that arrives while
    it flushes, and Python 3.11's wait_for one that arrives as its reply does; the call then
    returns as if never cancelled, and a loop that relied on the cancel would go on, and
    whoever waits for it would wait for ever. ``within`` bounds a stop by what a pass takes
    after the stop: a loop past it is a defect, said in the log, not a service that never
    stops."""
    stop.set()
    task.cancel()
    if within is None:
        # Unbounded, a cancel of the caller reaches the loop too, and the caller still waits
        # for it: a download's end (an anyio scope that sends its cancel again every turn)
        # must not drop what the loop is still binding.
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        _said_if_failed(task, outcome)
        return True
    done, _ = await asyncio.wait({task}, timeout=within)
    if not done:
        log.error(
            "a loop did not end on its stop: left running", loop=task.get_name(), waited=within
        )
        return False
    _said_if_failed(task, None if task.cancelled() else task.exception())
    return True


async def wait_within(
    tasks: Collection[asyncio.Future[Any]],
    within: float,
    left_running: str,
    *,
    cancel_left: bool = False,
    errors_retrieved: bool = False,
    level: Literal["error", "warning"] = "error",
) -> set[asyncio.Future[Any]]:
    """Wait for ``tasks`` ``within`` seconds at most; those still running then are logged
    (``left_running``) and returned, and cancelled with ``cancel_left``, but not waited for: a
    cancel can be lost (see end_loop), and a stop past its deadline is killed by `jobrunner up`.
    ``errors_retrieved``: the errors of those that ended are no one's to report (NATS away at
    a stop), and asyncio would otherwise log each as "never retrieved". A cancel of the caller
    while it waits reaches the caller alone, as with ``asyncio.wait``."""
    waited_for = set(tasks)  # a caller's own set may lose its ended tasks meanwhile
    if not waited_for:
        return set()  # asyncio.wait refuses an empty set
    _, left = await asyncio.wait(waited_for, timeout=within)
    if errors_retrieved:
        for task in waited_for:
            if task.done() and not task.cancelled():
                task.exception()
    if left:
        if cancel_left:
            for task in left:
                task.cancel()
        say = log.error if level == "error" else log.warning
        say(
            left_running,
            left=len(left),
            tasks=_names_logged(left),
            waited=round(within, 3),
        )
    return left


def _names_logged(tasks: Collection[asyncio.Future[Any]]) -> list[str]:
    """The first ``NAMES_LOGGED_MOST`` of ``tasks``' names, the names given by the code first."""
    names = [task.get_name() for task in tasks if isinstance(task, asyncio.Task)]
    names.sort(key=lambda name: (_ASYNCIO_NAME.fullmatch(name) is not None, name))
    return names[:NAMES_LOGGED_MOST]


def _said_if_failed(task: asyncio.Task[None], outcome: BaseException | None) -> None:
    if isinstance(outcome, Exception):
        # The loop had ended on an error of its own before the stop: say so, or no one would.
        log.warning(
            "a loop ended on an error before its stop", loop=task.get_name(), error=repr(outcome)
        )
