"""``together.both``: two awaitables at once, nothing of them left running once it returns."""

from __future__ import annotations

import asyncio

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
