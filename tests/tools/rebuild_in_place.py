"""The live projector's read-model rebuild (``upgrade.ensure_current_in_place``) run by a test
over an older state on a Postgres of the test's own, which the test stops or freezes meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import upgrade
from tests.tools.postgres_processes import thaw
from tests.upgrade_support import older_state


async def older_state_on(
    settings: Settings, own_postgres: EmbeddedPostgres, **history: Any
) -> Settings:
    """``settings`` on ``own_postgres``, which now holds an older jobrunner's state
    (``older_state``: ``history`` says how many jobs and lines)."""
    private = msgspec.structs.replace(settings, database_url=own_postgres.url)
    await older_state(private, **history)
    return private


@contextlib.asynccontextmanager
async def rebuilding(
    settings: Settings,
) -> AsyncIterator[tuple[asyncio.Task[upgrade.Outcome | None], asyncio.Event]]:
    """The rebuild under way while the block runs: its task and the event that stops it. At the
    block's end it is stopped, whatever the block did, and cancelled if it has not ended
    within 30 s (a test that failed leaves no rebuild running into the next)."""
    stop = asyncio.Event()
    task = asyncio.create_task(upgrade.ensure_current_in_place(settings, stop))
    try:
        yield task, stop
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait({task}, timeout=30)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=30)


async def stop_thawing_after(
    task: asyncio.Task[upgrade.Outcome | None],
    stop: asyncio.Event,
    frozen: list[int],
    thaw_after: float,
    left_rebuild_too: bool = False,
) -> bool:
    """Stop the rebuild (``stop``) with the Postgres processes ``frozen`` thawed ``thaw_after``
    seconds later, and wait for the stop to end (and, with ``left_rebuild_too``, for the
    rebuild a stop past its bound left running): whether that came before the thaw. Thawed at
    the end in any case."""
    thawed = False

    def thaw_now() -> None:
        nonlocal thawed
        thawed = True
        thaw(frozen)

    thawing = asyncio.get_running_loop().call_later(thaw_after, thaw_now)
    try:
        stop.set()
        assert await asyncio.wait_for(asyncio.shield(task), 60) is None
        if left_rebuild_too and (left := the_rebuild()) is not None:
            await asyncio.wait({left}, timeout=60)
        return not thawed
    finally:
        thawing.cancel()
        thaw(frozen)


def the_rebuild() -> asyncio.Task[object] | None:
    """The rebuild's own task (``ensure_current``), when it is still running."""
    for task in asyncio.all_tasks():
        if task.get_coro().__qualname__ == "ensure_current":  # type: ignore[union-attr]
            return task
    return None
