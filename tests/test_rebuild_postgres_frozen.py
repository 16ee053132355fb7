"""The projector's in-place rebuild of older read models with Postgres frozen (every Postgres
process SIGSTOPped) in the middle of its loading: thawed within the liveness probe's bound it
goes on and completes; frozen past it, the attempt is given up at the bound (its connections
ended), said once, and tried again until Postgres answers, then completes from its checkpoint,
nothing half-swapped. It used to wait for the thaw, however long, with nothing said."""

from __future__ import annotations

import asyncio
import threading

import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common import readmodelversion
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import outage, upgrade
from tests.tools.postgres_processes import freeze_postgres, thaw
from tests.tools.rebuild_progress import rebuild_begun
from tests.upgrade_support import complete, older_state, read_models

pytestmark = pytest.mark.timeout(300)

INTERRUPTED = upgrade.REBUILD_INTERRUPTED_EVENT
# How long the test waits for the rebuild at most: well past the freeze and the bound.
PATIENCE = 180.0
# The probe's bound (replay_postgres_answer_seconds), short for the test: a probe goes out every
# second, so a freeze 2 s past the bound leaves one unanswered at least 1 s past it.
BOUND = 4.0


@pytest.mark.parametrize(
    ("frozen_for", "given_up"),
    [
        (BOUND - 2, False),
        (BOUND + 2, True),
    ],
    ids=["thawed-within-the-bound", "thawed-past-it"],
)
async def test_a_rebuild_with_postgres_frozen_mid_load_is_given_up_at_the_bound_and_retried(
    settings: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    frozen_for: float,
    given_up: bool,
) -> None:
    """Thawed 2 s before the probe's bound (4 s, injected): the rebuild completes, nothing said.
    Frozen 2 s past it: an interruption said before the thaw, the rebuild completed after it,
    the read models whole and current, no rebuilt schema left beside them."""
    private = msgspec.structs.replace(
        settings, database_url=own_postgres.url, replay_postgres_answer_seconds=BOUND
    )
    made = await older_state(private, jobs=40, lines=1500, per_event=2)
    monkeypatch.setattr(outage, "RETRY_PAUSE_MAX", 0.5)  # retries come quickly after the thaw
    stop = asyncio.Event()
    pids: list[int] = []
    thawed = threading.Event()
    said_before_the_thaw: list[str] = []
    with capture_logs() as logs:
        rebuilding = asyncio.create_task(upgrade.ensure_current_in_place(private, stop))
        try:
            await rebuild_begun(private.database_url)
            assert not rebuilding.done(), "the rebuild ended before the freeze: make it bigger"
            pids = freeze_postgres(own_postgres)

            def thaw_now() -> None:
                said_before_the_thaw.extend(e["event"] for e in logs)
                thawed.set()
                thaw(pids)

            asyncio.get_running_loop().call_later(frozen_for, thaw_now)
            outcome = await asyncio.wait_for(asyncio.shield(rebuilding), PATIENCE)
        finally:
            thaw(pids)
            stop.set()
            await asyncio.wait({rebuilding}, timeout=30)
    assert thawed.is_set(), "the rebuild ended while Postgres was frozen"
    assert outcome is not None
    assert outcome.rebuilt
    interrupted = [e for e in logs if e["event"] == INTERRUPTED]
    if given_up:
        assert INTERRUPTED in said_before_the_thaw, "the rebuild waited for the thaw"
        assert interrupted, interrupted
    else:
        assert not interrupted, interrupted
    found = await read_models(private)
    assert complete(found, made) == []
    assert found["version"] == readmodelversion.READMODEL_VERSION
    assert found["schemas"] == {"readmodel"}
