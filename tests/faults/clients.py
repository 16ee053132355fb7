"""What a careful HTTP client of the fault tests does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx


async def until_answered(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    """Send again after a 5xx or a connection error, until answered (60 s at most)."""
    async with asyncio.timeout(60):
        while True:
            try:
                response = await send()
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
                continue
            if response.status_code < 500:
                return response
            await asyncio.sleep(0.2)
