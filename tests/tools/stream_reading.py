"""Reading an SSE stream in the background while a test hurts the servers behind it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.sse_client import SseStream, iter_events


async def read_into(response: Any, seen: SseStream) -> None:
    """Every event of ``response`` into ``seen.events``, its comments into ``seen.comments``."""
    async for event in iter_events(response, into=seen):
        seen.events.append(event)


async def until(reader: asyncio.Task[None], condition: Callable[[], object]) -> None:
    """Until ``condition`` holds of what the stream sent; fails if the stream ends first."""
    while not condition():
        if reader.done():
            reader.result()  # the stream's own error, if it had one
            raise AssertionError("the stream ended")
        await asyncio.sleep(0.05)
