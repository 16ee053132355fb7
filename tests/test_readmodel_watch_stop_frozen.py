"""The API's read-model watch is waited for within its bound even when Postgres is frozen in a
look that lost its cancel: its close waited with no bound, in series with the rest of the API's
stop (a look that takes its cancel ends at once, frozen Postgres or not).

Postgres (the postmaster and every backend) is frozen for real while the look reads from it,
for just less or longer than the bound."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.js import JetStreamContext

from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api import readmodelgate
from jobrunner.services.api.context import read_pool
from tests.freeze import freeze, thaw
from tests.tools.frozen_close import close_while_frozen
from tests.tools.postgres_processes import postgres_pids

BOUND = 3.0
LEFT = "a loop did not end on its stop: left running"


@pytest.mark.parametrize(
    ("frozen_for", "ended"),
    [(BOUND - 2, True), (BOUND + 30, False)],
    ids=["freeze-within-the-bound", "freeze-past-the-bound"],
)
async def test_the_read_model_watch_ends_within_its_bound_while_postgres_is_frozen(
    js: JetStreamContext,
    settings: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    frozen_for: float,
    ended: bool,
) -> None:
    """Frozen 1 s, the look deaf to its cancel ends once Postgres answers and the watch with it;
    frozen past the bound, the watch is left after it, said in the log, and the stop goes on."""
    monkeypatch.setattr(readmodelgate, "RECHECK_SECONDS", 0.1)
    monkeypatch.setattr(readmodelgate, "CURRENT_CHECK_SECONDS", 0.1)
    pool = await read_pool(own_postgres.url, 60.0)
    gate = readmodelgate.ReadModelGate(
        pool, js, Names(settings.prefix), settings.projector_stuck_seconds
    )
    pids: list[int] = []
    try:
        await gate.start()
        looking = asyncio.Event()
        real_check = gate.check
        lost = 0

        async def check_deaf_to_a_cancel(**how: Any) -> Any:
            # A look that lost its cancel (as 3.11's wait_for loses one arriving with its
            # reply) and reads again: it waits on the frozen Postgres for the read pool's
            # deadline (60 s), or until Postgres answers.
            nonlocal lost
            looking.set()
            try:
                return await real_check(**how)
            except asyncio.CancelledError:
                lost += 1
                return await real_check(**how)

        # Listed once the start's look has opened the pool's connection (none is opened
        # before: read_pool's min_size is 0), so that its backend is frozen too.
        pids.extend(postgres_pids(own_postgres))
        for pid in pids:
            freeze(pid)
        monkeypatch.setattr(gate, "check", check_deaf_to_a_cancel)
        await asyncio.wait_for(looking.wait(), 30)  # a look begun with Postgres frozen
        await asyncio.sleep(0.2)
        closed = await close_while_frozen(
            gate.close(within=BOUND),
            "the watch's close",
            patience=BOUND + 20,
            thaw_in=frozen_for,
            pids=pids,
        )
        assert lost == 1
        assert closed.logged(LEFT) == (0 if ended else 1)
        if not ended:
            # Left at the bound (a loaded machine's margin), not at the read's 60 s deadline.
            assert closed.took < BOUND + 2, f"closed after {closed.took:.1f} s"
    finally:
        thaw(*pids)
        await pool.close()
