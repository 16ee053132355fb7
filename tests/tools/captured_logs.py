"""Waiting on structlog's captured lines (``structlog.testing.capture_logs``)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any


def lines_of(logs: Sequence[Mapping[str, Any]], event: str) -> list[Mapping[str, Any]]:
    return [line for line in logs if line["event"] == event]


async def until_logged(logs: Sequence[Mapping[str, Any]], event: str, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not lines_of(logs, event):  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # structlog's capture: a list, no event
