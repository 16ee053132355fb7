"""A cancel lost, once, as nats-py loses one that arrives while it flushes and 3.11's
``wait_for`` one that arrives with the reply: for the tests of a stop that must not rely on its
cancel. Only the first is lost: a later one (a failed test's clean-up) goes through."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class CancelLost:
    """``run(work)``: ``work`` run for real; the first cancel arriving while it runs is lost (the
    work goes on to its end). ``under_way`` is set once a work has begun."""

    def __init__(self) -> None:
        self.under_way = asyncio.Event()
        self.lost = 0

    async def run(self, work: Awaitable[T]) -> T:
        running = asyncio.ensure_future(work)
        self.under_way.set()
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            self.lost += 1
            if self.lost > 1:
                running.cancel()
                raise
            return await running


class CancelLostInAPause:
    """``pause(seconds)``, put after (or around) a real call: the moment its reply is about to
    come. Until a cancel has been lost, it sets ``reached`` and waits ``seconds``, and a cancel
    arriving meanwhile is lost; after that it returns at once."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.lost = 0

    async def pause(self, seconds: float) -> None:
        if self.lost:
            return
        self.reached.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.lost += 1


class LosingACancel(CancelLostInAPause):
    """Wraps ``call``: after the real call returns, the next cancel is lost, once
    (``pause``)."""

    def __init__(self, call: Callable[..., Awaitable[Any]]) -> None:
        super().__init__()
        self.call = call

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = await self.call(*args, **kwargs)
        await self.pause(0.5)  # (the reply about to come)
        return result
