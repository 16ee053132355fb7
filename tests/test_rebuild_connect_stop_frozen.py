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

import pytest
from structlog.testing import capture_logs

from jobrunner.common import database
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import timestamps, upgrade
from tests.tools.postgres_processes import freeze_postgres
from tests.tools.rebuild_in_place import older_state_on, rebuilding, stop_thawing_after

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
    frozen = freeze_at_the_nth_call(monkeypatch, own_postgres, timestamps, "init_connection", nth)
    said_left = await stopped_while_frozen(settings, own_postgres, frozen, left)
    assert said_left == (1 if left else 0)


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
    frozen = freeze_at_the_nth_call(
        monkeypatch, own_postgres, database, "connect_or_unreachable", nth
    )
    said_left = await stopped_while_frozen(settings, own_postgres, frozen, left)
    assert said_left == (1 if left and held_open else 0)


class Frozen:
    """Postgres frozen by a call of the rebuild's: once ``at`` is set, ``pids`` holds every
    process it froze."""

    def __init__(self) -> None:
        self.at = asyncio.Event()
        self.pids: list[int] = []


def freeze_at_the_nth_call(
    monkeypatch: pytest.MonkeyPatch,
    own_postgres: EmbeddedPostgres,
    owner: object,
    name: str,
    nth: int,
) -> Frozen:
    """``owner.name`` (a coroutine function) made to freeze all of ``own_postgres`` at its
    ``nth`` call, just before it does what it does (every process, for real)."""
    frozen = Frozen()
    called = getattr(owner, name)
    count = 0

    async def freezing_at_the_nth(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        if count == nth:
            frozen.pids.extend(freeze_postgres(own_postgres))
            frozen.at.set()
        return await called(*args, **kwargs)

    monkeypatch.setattr(owner, name, freezing_at_the_nth)
    return frozen


async def stopped_while_frozen(
    settings: Settings, own_postgres: EmbeddedPostgres, frozen: Frozen, left: bool
) -> int:
    """The rebuild of an older state stopped once ``frozen``, Postgres thawed a third into the
    stop's bound or, ``left``, 4 s past it (the stop and the rebuild must have ended first);
    no connection said not closed in time. How many times the rebuild was said left."""
    private = await older_state_on(settings, own_postgres)
    bound = upgrade.rebuild_stop_seconds(private)
    with capture_logs() as logs:
        async with rebuilding(private) as (task, stop):
            await asyncio.wait_for(frozen.at.wait(), 60)
            ended_first = await stop_thawing_after(
                task,
                stop,
                frozen.pids,
                bound + PAST_THE_BOUND if left else bound / 3,
                left_rebuild_too=True,
            )
    if left:
        assert ended_first, "the stop, or the rebuild it left, waited for the thaw"
    assert not [e for e in logs if e["event"] == NOT_CLOSED]
    return len([e for e in logs if e["event"] == LEFT])
