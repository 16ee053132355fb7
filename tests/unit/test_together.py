"""``together.both``: two awaitables at once, nothing of them left running once it returns."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from jobrunner.common import together


async def test_both_answers_are_returned_in_order() -> None:
    async def later(value: str) -> str:
        await asyncio.sleep(0)
        return value

    assert await together.both(later("first"), later("second")) == ("first", "second")


async def test_a_failure_raises_its_own_error_with_the_other_cancelled() -> None:
    """Its own type, not an ExceptionGroup: callers tell a NATS outage apart by type."""
    other = asyncio.Event()
    never = asyncio.Event()

    async def waits() -> None:
        other.set()
        await never.wait()

    async def fails() -> None:
        await other.wait()
        raise LookupError("refused")

    waiting = asyncio.ensure_future(waits())
    with pytest.raises(LookupError):
        await together.both(waiting, fails())
    assert waiting.cancelled()


async def test_a_cancel_of_the_caller_ends_both() -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def waits() -> None:
        started.set()
        await never.wait()

    first, second = asyncio.ensure_future(waits()), asyncio.ensure_future(waits())
    calling = asyncio.ensure_future(together.both(first, second))
    await started.wait()
    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling
    assert first.cancelled()
    assert second.cancelled()


async def both_noting_the_ends(
    first: asyncio.Future[object], second: asyncio.Future[object], ended: list[bool]
) -> tuple[object, object]:
    """``together.both``, noting whether each child had ended when it returned or raised."""
    try:
        return await together.both(first, second)
    finally:
        ended.extend([first.done(), second.done()])


async def waits_for(event: asyncio.Event) -> None:
    await event.wait()


class SlowToEnd:
    """A child whose end takes steps after its cancel: it swallows every cancel until
    ``release`` is set (its clean-up, say), and sets ``told`` at its ``told_at``-th cancel."""

    def __init__(self, told_at: int) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.told = asyncio.Event()
        self.told_at = told_at
        self.cancels = 0

    async def run(self) -> None:
        self.started.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancels += 1
                if self.cancels == self.told_at:
                    self.told.set()


async def test_a_cancel_of_the_caller_a_child_swallows_still_cancels_the_caller() -> None:
    """A child swallows its cancel and answers (3.11's ``wait_for`` does when the future it
    waits for ends at the same time): the caller is still cancelled, both ended by then."""
    started = asyncio.Event()
    never = asyncio.Event()

    async def swallows() -> str:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await never.wait()
        return "answered"

    ended: list[bool] = []
    swallowing = asyncio.ensure_future(swallows())
    waiting = asyncio.ensure_future(waits_for(never))
    calling = asyncio.ensure_future(both_noting_the_ends(swallowing, waiting, ended))
    await started.wait()
    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling
    assert ended == [True, True]


async def test_a_failure_while_the_other_swallows_its_cancel_raises_the_failure() -> None:
    """One child fails, the other swallows the cancel that follows and takes a step more to end:
    the failure's own error is raised, once the other has ended."""
    other = asyncio.Event()
    never = asyncio.Event()

    async def swallows() -> str:
        other.set()
        with contextlib.suppress(asyncio.CancelledError):
            await never.wait()
        await asyncio.sleep(0)
        return "answered"

    async def fails() -> None:
        await other.wait()
        raise LookupError("refused")

    ended: list[bool] = []
    swallowing, failing = asyncio.ensure_future(swallows()), asyncio.ensure_future(fails())
    with pytest.raises(LookupError):
        await both_noting_the_ends(swallowing, failing, ended)
    assert ended == [True, True]


async def test_a_second_cancel_of_the_caller_still_waits_for_both_to_end() -> None:
    """The caller cancelled, and cancelled again while ``both`` waits for a child slow to end:
    the cancel propagates only once both have ended."""
    slow = SlowToEnd(told_at=2)  # the cancel of the caller passed on, then both's own
    never = asyncio.Event()
    ended: list[bool] = []
    ending = asyncio.ensure_future(slow.run())
    calling = asyncio.ensure_future(
        both_noting_the_ends(ending, asyncio.ensure_future(waits_for(never)), ended)
    )
    await slow.started.wait()
    calling.cancel()
    await slow.told.wait()  # both is waiting for the children now
    calling.cancel()
    slow.release.set()
    with pytest.raises(asyncio.CancelledError):
        await calling
    assert ended == [True, True]


async def test_a_cancel_while_a_failures_other_child_ends_raises_the_cancel() -> None:
    """One child fails, and the caller is cancelled while ``both`` waits for the other, slow to
    end: the caller gets the cancel (it was cancelled), once both have ended."""
    slow = SlowToEnd(told_at=1)  # both's own cancel: it is waiting for the children now

    async def fails() -> None:
        await slow.started.wait()
        raise LookupError("refused")

    ended: list[bool] = []
    ending = asyncio.ensure_future(slow.run())
    calling = asyncio.ensure_future(
        both_noting_the_ends(ending, asyncio.ensure_future(fails()), ended)
    )
    await slow.told.wait()
    calling.cancel()
    slow.release.set()
    with pytest.raises(asyncio.CancelledError):
        await calling
    assert ended == [True, True]
