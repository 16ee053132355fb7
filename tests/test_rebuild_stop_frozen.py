"""The projector stopped while it rebuilds older read models and Postgres is frozen (every
Postgres process SIGSTOPped: the cancel, the ROLLBACK and the closes are never answered): the stop
waits for the cancelled rebuild ``upgrade.REBUILD_STOP_SECONDS`` at most, then leaves it, said in
the log. It used to wait for the thaw, holding the projector's stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common.readmodelversion import UPGRADE_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import upgrade
from tests import servers
from tests.freeze import freeze
from tests.tools.postgres_processes import postgres_pids
from tests.upgrade_support import older_state

pytestmark = pytest.mark.timeout(300)

LEFT = "the read-model rebuild (resumed from its checkpoint at the next start): left running"
# Outer bound on the stop: the frozen-throughout case ends after REBUILD_STOP_SECONDS, long
# before the thaw at THAWED_AT; room for a loaded machine.
THAWED_AT = 120.0


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres of this test's own: it is frozen, so it must not be the shared one."""
    async with servers.own_postgres("jobrunner-test-rebuild-stop-frozen-") as server:
        yield server


async def rebuild_begun(url: str) -> None:
    """Until the rebuild has loaded events into its schema (its checkpoint moved)."""
    conn = await asyncpg.connect(url)
    try:
        async with asyncio.timeout(60):
            while not (  # noqa: ASYNC110 (nothing to wait on but Postgres)
                await conn.fetchval(
                    "SELECT to_regclass($1) IS NOT NULL", f"{UPGRADE_SCHEMA}.checkpoint"
                )
                and await conn.fetchval(
                    f"SELECT last_seq > 0 FROM {UPGRADE_SCHEMA}.checkpoint WHERE id = 1"
                )
            ):
                await asyncio.sleep(0.02)
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("thawed_after", "left"),
    [(upgrade.REBUILD_STOP_SECONDS / 3, False), (None, True)],
    ids=["thawed-within-the-bound", "frozen-past-the-bound"],
)
async def test_a_stop_mid_rebuild_with_postgres_frozen_ends_within_its_bound(
    settings: Settings, own_postgres: EmbeddedPostgres, thawed_after: float | None, left: bool
) -> None:
    """Postgres thawed a second into the stop: the rebuild's cancel completes, nothing said.
    Frozen past REBUILD_STOP_SECONDS: the stop ends all the same, the rebuild said left."""
    private = msgspec.structs.replace(settings, database_url=own_postgres.url)
    await older_state(private, jobs=40, lines=1500, per_event=2)
    stop = asyncio.Event()
    pids: list[int] = []
    with capture_logs() as logs:
        rebuilding = asyncio.create_task(upgrade.ensure_current_in_place(private, stop))
        try:
            await rebuild_begun(private.database_url)
            assert not rebuilding.done(), "the rebuild ended before the freeze: make it bigger"
            pids = postgres_pids(own_postgres)
            for pid in pids:
                freeze(pid)
            loop = asyncio.get_running_loop()
            thaw = loop.call_later(THAWED_AT if thawed_after is None else thawed_after, _thaw, pids)
            stop.set()
            async with asyncio.timeout(THAWED_AT / 2):  # before the fix: until the thaw
                assert await asyncio.shield(rebuilding) is None
            thaw.cancel()
        finally:
            _thaw(pids)
            if not rebuilding.done():
                rebuilding.cancel()
                await asyncio.wait({rebuilding}, timeout=30)
    said = [e for e in logs if e["event"] == LEFT]
    assert len(said) == (1 if left else 0), said


def _thaw(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
