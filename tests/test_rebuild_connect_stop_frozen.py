"""The projector stopped while its read-model rebuild opens a Postgres connection and Postgres
is frozen: the connection open but its set-up (``timestamps.init_connection``, queries) not
answered. The stop ends within ``upgrade.rebuild_stop_seconds``, and so does the rebuild, as
for a stop mid-statement (test_rebuild_stop_frozen.py): such a connection is not yet among the
rebuild's (``upgrade.Connections``) that a stop past the bound terminates, and its cancelled
set-up must not wait on the frozen server for a graceful close.

A connect that has not been answered yet (Postgres frozen just before it) ends at its cancel:
asyncpg closes the socket at once (the second test).

The freeze comes at the very moment: the set-up of the rebuild's ``nth`` connection freezes
Postgres (every process, for real) before it sends its first query."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common import database
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import timestamps, upgrade
from tests.tools.postgres_processes import freeze_postgres, thaw
from tests.upgrade_support import older_state

pytestmark = pytest.mark.timeout(300)

LEFT = "the read-model rebuild (resumed from its checkpoint at the next start): left running"
NOT_CLOSED = "connection not closed in time (postgres not answering): dropped"
# The fault just longer than the bound: Postgres thawed this long past it.
PAST_THE_BOUND = 4.0
# The rebuild's connections set up in turn: the replay lock's, then its pool's two.
LOCK_HOLDER, POOLED = 1, 2
# The rebuild's connects in turn: its version check's, the replay lock's, its pool's first.
CHECKS_THE_VERSION, LOCK_HOLDER_CONNECT, POOLED_CONNECT = 1, 2, 3


@pytest.mark.parametrize("nth", [LOCK_HOLDER, POOLED], ids=["lock-holder", "pooled"])
@pytest.mark.parametrize("left", [False, True], ids=["thawed-within-the-bound", "thawed-past-it"])
async def test_a_stop_while_the_rebuild_sets_up_a_connection_ends_within_its_bound(
    settings: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    nth: int,
    left: bool,
) -> None:
    """Postgres thawed a third into the stop's bound: the set-up's cancel completes, nothing
    said. Frozen until 4 s past the bound: the stop, and the rebuild with it, have ended before
    the thaw, the rebuild said left, no connection waited for; they used to wait for the thaw
    (or the close's own bound)."""
    private = msgspec.structs.replace(settings, database_url=own_postgres.url)
    bound = upgrade.rebuild_stop_seconds(private)
    await older_state(private)
    pids: list[int] = []  # every process of Postgres as it was frozen, its new backend's too
    frozen = asyncio.Event()
    set_up = timestamps.init_connection
    count = 0

    async def frozen_at_the_nth(conn: asyncpg.Connection) -> None:
        nonlocal count
        count += 1
        if count == nth:
            pids.extend(freeze_postgres(own_postgres))
            frozen.set()
        await set_up(conn)

    monkeypatch.setattr(timestamps, "init_connection", frozen_at_the_nth)
    stop = asyncio.Event()
    thawed: list[bool] = []
    with capture_logs() as logs:
        rebuilding = asyncio.create_task(upgrade.ensure_current_in_place(private, stop))
        try:
            await asyncio.wait_for(frozen.wait(), 60)
            loop = asyncio.get_running_loop()
            thawing = loop.call_later(
                bound + PAST_THE_BOUND if left else bound / 3, _thaw, pids, thawed
            )
            stop.set()
            assert await asyncio.wait_for(asyncio.shield(rebuilding), 60) is None
            rebuild = _the_rebuild()
            if rebuild is not None:
                await asyncio.wait({rebuild}, timeout=60)
            if left:
                assert not thawed, "the stop, or the rebuild it left, waited for the thaw"
            thawing.cancel()
        finally:
            _thaw(pids)
            if not rebuilding.done():
                rebuilding.cancel()
                await asyncio.wait({rebuilding}, timeout=30)
    said = [e for e in logs if e["event"] == LEFT]
    assert len(said) == (1 if left else 0), said
    assert not [e for e in logs if e["event"] == NOT_CLOSED]


def _the_rebuild() -> asyncio.Task[object] | None:
    """The rebuild's own task (``ensure_current``), when it is still running."""
    for task in asyncio.all_tasks():
        if task.get_coro().__qualname__ == "ensure_current":  # type: ignore[union-attr]
            return task
    return None


def _thaw(pids: list[int], thawed: list[bool] | None = None) -> None:
    if thawed is not None:
        thawed.append(True)
    thaw(pids)


@pytest.mark.parametrize(
    ("nth", "held_open"),
    [(CHECKS_THE_VERSION, False), (LOCK_HOLDER_CONNECT, False), (POOLED_CONNECT, True)],
    ids=["version-check", "lock-holder", "pooled"],
)
@pytest.mark.parametrize("left", [False, True], ids=["thawed-within-the-bound", "thawed-past-it"])
async def test_a_stop_while_the_rebuild_connects_to_a_frozen_postgres_ends_within_its_bound(
    settings: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    nth: int,
    held_open: bool,
    left: bool,
) -> None:
    """Postgres frozen just before the rebuild's ``nth`` connect (its version check's, the
    replay lock's, its pool's first), the connect under way at the stop: the stop and the
    rebuild end within the bound, past it before the thaw. A connect not answered is dropped at
    its cancel, nothing said; only a connection already open (the lock holder's, before the
    pool's connect) has a close that waits on Postgres, left past the bound and said."""
    private = msgspec.structs.replace(settings, database_url=own_postgres.url)
    bound = upgrade.rebuild_stop_seconds(private)
    await older_state(private)
    pids: list[int] = []
    frozen = asyncio.Event()
    connect = database.connect_or_unreachable
    count = 0

    async def frozen_before_the_nth(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        nonlocal count
        count += 1
        if count == nth:
            pids.extend(freeze_postgres(own_postgres))
            frozen.set()
        return await connect(*args, **kwargs)

    monkeypatch.setattr(database, "connect_or_unreachable", frozen_before_the_nth)
    stop = asyncio.Event()
    thawed: list[bool] = []
    with capture_logs() as logs:
        rebuilding = asyncio.create_task(upgrade.ensure_current_in_place(private, stop))
        try:
            await asyncio.wait_for(frozen.wait(), 60)
            thawing = asyncio.get_running_loop().call_later(
                bound + PAST_THE_BOUND if left else bound / 3, _thaw, pids, thawed
            )
            stop.set()
            assert await asyncio.wait_for(asyncio.shield(rebuilding), 60) is None
            rebuild = _the_rebuild()
            if rebuild is not None:
                await asyncio.wait({rebuild}, timeout=60)
            if left:
                assert not thawed, "the stop, or the rebuild it left, waited for the thaw"
            thawing.cancel()
        finally:
            _thaw(pids)
            if not rebuilding.done():
                rebuilding.cancel()
                await asyncio.wait({rebuilding}, timeout=30)
    said = [e for e in logs if e["event"] == LEFT]
    assert len(said) == (1 if left and held_open else 0), said
    assert not [e for e in logs if e["event"] == NOT_CLOSED]
