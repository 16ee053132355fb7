"""A test's wait on a state nothing signals (an object's attribute, a counter): looked at again
and again, bounded, and failing with a sentence that says what never happened."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# A bound on a broken test only: past it the test fails (through its finally, which undoes what
# it did: thaws what it froze), rather than hang until pytest-timeout ends the whole worker.
BROKEN_TEST_AFTER = 60


async def until(
    condition: Callable[[], object],
    what: str,
    every: float = 0.01,
    seconds: float = BROKEN_TEST_AFTER,
) -> None:
    """Until ``condition`` holds, looked at every ``every`` seconds (0: every turn of the
    loop); past ``seconds`` an ``AssertionError`` says that ``what`` did not happen."""
    try:
        async with asyncio.timeout(seconds):
            while not condition():  # noqa: ASYNC110 - a state nothing signals
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"{what}: not within {seconds:g} s") from None
