"""A service's stop closes its Postgres pool within ``POOL_CLOSE_SECONDS`` even when Postgres is
frozen: the API's and the projector's stop waited for ever.

asyncpg's graceful close sends each connection's Terminate and waits until Postgres closes the
socket, with no bound when the pool has no command timeout (ours have none); a frozen backend
never closes it. Here Postgres (the postmaster and every backend) is frozen for real, for just
less or longer than the bound."""

from __future__ import annotations

import asyncpg
import pytest

from jobrunner.common import database
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests.freeze import frozen
from tests.tools.frozen_close import close_while_frozen
from tests.tools.postgres_processes import postgres_pids

BOUND = 3.0  # POOL_CLOSE_SECONDS here
DROPPED = (
    "pool not closed in time (a connection not given back, or postgres not answering):"
    " its connections dropped"
)


@pytest.mark.parametrize(
    ("frozen_for", "graceful"),
    [(BOUND - 2, True), (BOUND + 30, False)],
    ids=["freeze-within-the-bound", "freeze-past-the-bound"],
)
async def test_a_pool_closes_within_its_bound_while_postgres_is_frozen(
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    frozen_for: float,
    graceful: bool,
) -> None:
    """Frozen 1 s, the pool's connections close gracefully once Postgres answers; frozen past
    the bound, they are dropped after it, said in the log, and the stop goes on."""
    monkeypatch.setattr(database, "POOL_CLOSE_SECONDS", BOUND)
    pool = await database.create_pool(own_postgres.url, min_size=2, max_size=2)
    pids = postgres_pids(own_postgres)
    try:
        with frozen(*pids):
            closed = await close_while_frozen(
                database.close_pool(pool),
                "the pool's close",
                patience=BOUND + 20,
                thaw_in=frozen_for,
                pids=pids,
            )
            assert closed.logged(DROPPED) == (0 if graceful else 1)
            assert pool._closed
    finally:
        pool.terminate()


CONNECTION_DROPPED = "connection not closed in time (postgres not answering): dropped"


@pytest.mark.parametrize(
    ("frozen_for", "graceful"),
    [(BOUND - 2, True), (BOUND + 30, False)],
    ids=["freeze-within-the-bound", "freeze-past-the-bound"],
)
async def test_a_single_connection_closes_within_its_bound_while_postgres_is_frozen(
    own_postgres: EmbeddedPostgres, frozen_for: float, graceful: bool
) -> None:
    """The projector's own connections (the schema's check, the replay lock's holder) close as
    a pool does: gracefully once Postgres answers within the bound, dropped and logged past it
    (asyncpg's close waits for the socket's close with no bound)."""
    conn = await asyncpg.connect(own_postgres.url)
    pids = postgres_pids(own_postgres)
    try:
        with frozen(*pids):
            closed = await close_while_frozen(
                database.close_connection(conn, within=BOUND),
                "the connection's close",
                patience=BOUND + 20,
                thaw_in=frozen_for,
                pids=pids,
            )
            assert closed.logged(CONNECTION_DROPPED) == (0 if graceful else 1)
            if not graceful:
                # Dropped at the bound (a loaded machine's margin), not at some later timeout.
                assert closed.took < BOUND + 2, f"closed after {closed.took:.1f} s"
            assert conn.is_closed()
    finally:
        conn.terminate()
