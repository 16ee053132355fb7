"""A runner's lock board watching the lock bucket, as the runner's own does: for the tests of
the queue's orphaned heads, which need the board to know the queue before they claim or sweep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.js.kv import KeyValue

from jobrunner.services.runner.board import LockBoard


@asynccontextmanager
async def watching_board(kv: KeyValue) -> AsyncIterator[tuple[LockBoard, asyncio.Event]]:
    """A board that has read ``kv`` once and follows it until the event is set (by the test, or
    at the end)."""
    board, stop = LockBoard(), asyncio.Event()

    async def nothing(value: object) -> None:
        pass

    watching = asyncio.create_task(board.watch(kv, stop, nothing))
    try:
        await asyncio.wait_for(board.ready.wait(), 10)
        yield board, stop
    finally:
        stop.set()
        await asyncio.wait({watching}, timeout=10)


async def board_has(board: LockBoard, lock: str, job_id: str) -> None:
    """Until ``board`` has ``job_id`` queued for ``lock``."""
    async with asyncio.timeout(10):
        while not board.queued("slot." + lock, job_id):
            await board.wait_change("slot." + lock, 0.1)
