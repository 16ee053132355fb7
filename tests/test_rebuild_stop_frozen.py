"""The projector stopped while it rebuilds older read models and Postgres is frozen (every
Postgres process SIGSTOPped: the cancel, the ROLLBACK and the closes are never answered): the stop
waits for the cancelled rebuild ``upgrade.rebuild_stop_seconds`` at most, then leaves it, said in
the log, its connections terminated. It used to wait for the thaw, holding the projector's stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import upgrade
from tests.freeze import freeze
from tests.tools.postgres_processes import postgres_pids
from tests.tools.rebuild_progress import rebuild_begun
from tests.upgrade_support import older_state

pytestmark = pytest.mark.timeout(300)

LEFT = "the read-model rebuild (resumed from its checkpoint at the next start): left running"
# The fault just longer than the bound: thawed 2 s past it. The stop must have ended first.
PAST_THE_BOUND = 2.0


@pytest.mark.parametrize("left", [False, True], ids=["thawed-within-the-bound", "thawed-past-it"])
async def test_a_stop_mid_rebuild_with_postgres_frozen_ends_within_its_bound(
    settings: Settings, own_postgres: EmbeddedPostgres, left: bool
) -> None:
    """Postgres thawed a third into the stop's bound: the rebuild's cancel completes, nothing
    said. Frozen until 2 s past the bound: the stop has ended before the thaw, the rebuild said
    left (its connections terminated)."""
    private = msgspec.structs.replace(settings, database_url=own_postgres.url)
    bound = upgrade.rebuild_stop_seconds(private)
    await older_state(private, jobs=40, lines=1500, per_event=2)
    stop = asyncio.Event()
    pids: list[int] = []
    thawed: list[bool] = []
    with capture_logs() as logs:
        rebuilding = asyncio.create_task(upgrade.ensure_current_in_place(private, stop))
        try:
            await rebuild_begun(private.database_url)
            assert not rebuilding.done(), "the rebuild ended before the freeze: make it bigger"
            pids = postgres_pids(own_postgres)
            for pid in pids:
                freeze(pid)
            loop = asyncio.get_running_loop()
            thaw = loop.call_later(
                bound + PAST_THE_BOUND if left else bound / 3, _thaw, pids, thawed
            )
            stop.set()
            assert await asyncio.shield(rebuilding) is None
            if left:
                assert not thawed, "the stop waited for the thaw"
            thaw.cancel()
        finally:
            _thaw(pids)
            if not rebuilding.done():
                rebuilding.cancel()
                await asyncio.wait({rebuilding}, timeout=30)
    said = [e for e in logs if e["event"] == LEFT]
    assert len(said) == (1 if left else 0), said


def _thaw(pids: list[int], thawed: list[bool] | None = None) -> None:
    if thawed is not None:
        thawed.append(True)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
