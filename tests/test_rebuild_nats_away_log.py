"""A read-model rebuild waiting out NATS stopped in the middle of its loading says so as its
Postgres outages are said (outage.RetryLog): each kind of NATS error once, then at most once
per ``outage.RETRY_LOG_SECONDS`` across its attempts, and "rebuilding them from the event
stream" once. Its NATS connection had a throttle of its own, one line per 10 s for as long as
NATS stayed away, and every attempt said the rebuild began again."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import outage, upgrade
from tests.tools.rebuild_progress import rebuild_begun
from tests.upgrade_support import complete, older_state, read_models

pytestmark = pytest.mark.timeout(300)

BEGUN = "the read models are older than this jobrunner"
# NATS away this long: several of a connection's own log periods (eventstore.ERROR_LOG_INTERVAL)
# and several attempts' pauses, well within one RETRY_LOG_SECONDS.
AWAY = 2.5 * eventstore.ERROR_LOG_INTERVAL


async def test_a_rebuild_waiting_out_nats_says_each_kind_of_error_once_a_period(
    settings: Settings, own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """NATS stopped for 25 s as the rebuild loads, then started again on the same port and
    store: each kind of NATS error said once, the rebuild's start said once, and the rebuild
    completes once NATS is back."""
    nats = EmbeddedNats(tmp_path / "nats")
    await asyncio.to_thread(nats.start)
    try:
        private = msgspec.structs.replace(
            settings, database_url=own_postgres.url, nats_url=nats.url
        )
        made = await older_state(private, jobs=40, lines=1500, per_event=2)
        stop = asyncio.Event()
        with capture_logs() as logs:
            rebuilding = asyncio.create_task(upgrade.ensure_current_in_place(private, stop))
            try:
                await rebuild_begun(private.database_url)
                assert not rebuilding.done(), "the rebuild ended before NATS stopped"
                await asyncio.to_thread(nats.stop)
                await asyncio.sleep(AWAY)  # the outage itself: nothing to wait on
                nats = EmbeddedNats(tmp_path / "nats", port=nats.port)
                await asyncio.to_thread(nats.start)
                outcome = await asyncio.wait_for(asyncio.shield(rebuilding), 120)
            finally:
                stop.set()
                await asyncio.wait({rebuilding}, timeout=30)
    finally:
        await asyncio.to_thread(nats.stop)
    assert outcome is not None
    assert outcome.rebuilt
    assert complete(await read_models(private), made) == []
    begun = [e for e in logs if e["event"].startswith(BEGUN)]
    assert len(begun) == 1, begun
    nats_errors = Counter(
        e["error"] for e in logs if e["event"] == "nats error" and e.get("connection") == "upgrade"
    )
    assert nats_errors, "NATS stopped and no error said"
    assert max(nats_errors.values()) == 1, nats_errors
    assert outage.RETRY_LOG_SECONDS > AWAY
