"""A read-model rebuild that waits out a Postgres outage says so once when its first attempt
fails, then at most once per ``outage.RETRY_LOG_SECONDS`` (the attempts left out counted), and
once when an attempt succeeds; it used to log an error per attempt (one every 5 s for as long
as Postgres was down), and nothing when it went on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from jobrunner.common import readmodelversion
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector import outage, upgrade
from jobrunner.services.projector.replay import Progress
from tests.replaylock_support import terminate_lock_holder
from tests.tools.rebuild_in_place import older_state_on, rebuilding

pytestmark = pytest.mark.timeout(300)

FAILED = upgrade.REBUILD_INTERRUPTED_EVENT
LOCK_LOST = upgrade.REBUILD_LOCK_LOST_EVENT
# Attempts that fail before Postgres is started again: many more than one line's worth.
FAILED_ATTEMPTS = 6
# The pause between attempts, short so that they come quickly (5 s at most in production).
PAUSE = 0.05


async def test_a_rebuild_waiting_out_an_outage_logs_its_first_failure_and_its_success(
    settings: Settings, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres down through six attempts, then started: one error line (the first failure),
    then one line when the rebuild succeeds, with its attempts counted."""
    private = await older_state_on(settings, own_postgres)
    outcome, logs, pauses = await rebuilt_after_an_outage(
        private, own_postgres, monkeypatch, FAILED_ATTEMPTS
    )
    assert outcome.found is not None
    assert outcome.found < readmodelversion.READMODEL_VERSION
    failed = [e for e in logs if e["event"] == FAILED]
    assert len(failed) == 1, failed
    assert failed[0]["attempt"] == 1
    assert failed[0]["error_code"] == "REBUILD_INTERRUPTED"
    back = [e for e in logs if e["event"] == upgrade.REBUILD_BACK_EVENT]
    assert len(back) == 1, back
    assert back[0]["attempts"] == pauses + 1
    assert back[0]["attempts"] > FAILED_ATTEMPTS


async def test_a_lost_replay_lock_just_after_an_outage_is_logged(
    settings: Settings, own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres down at the first attempt (REBUILD_INTERRUPTED, said), then the next attempt's
    replay lock lost just before its swap, seconds later: that is said too (REPLAY_LOCK_LOST),
    and the third attempt swaps. The two shared one throttle: the lost lock was left out as a
    repeat of the interruption."""
    private = await older_state_on(settings, own_postgres)
    lock_sessions_ended = 0

    def lock_session_ended_once(progress: Progress) -> None:
        nonlocal lock_sessions_ended
        if progress.phase == "swapping" and not lock_sessions_ended:  # just before the swap
            lock_sessions_ended += 1
            ending = threading.Thread(target=asyncio.run, args=(terminate_lock_holder(private),))
            ending.start()
            ending.join()

    monkeypatch.setattr(upgrade, "log_progress", lock_session_ended_once)
    _, logs, _ = await rebuilt_after_an_outage(private, own_postgres, monkeypatch, 1)
    assert lock_sessions_ended == 1
    said = [e["error_code"] for e in logs if e["event"] in (FAILED, LOCK_LOST)]
    assert said[0] == "REBUILD_INTERRUPTED", said
    assert "REPLAY_LOCK_LOST" in said, said


async def rebuilt_after_an_outage(
    settings: Settings,
    own_postgres: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    failed_attempts: int,
) -> tuple[upgrade.Outcome, list[MutableMapping[str, Any]], int]:
    """The rebuild started with Postgres stopped, which starts again once the rebuild has paused
    ``failed_attempts`` times (quickly: ``PAUSE``): its outcome (rebuilt), what it logged, and
    how many pauses it made in all."""
    monkeypatch.setattr(outage, "RETRY_PAUSE_MAX", PAUSE)
    pauses = 0
    paused = outage.wait_or_stop

    async def counted(stop: asyncio.Event, pause: float) -> bool:
        nonlocal pauses
        pauses += 1
        return await paused(stop, pause)

    monkeypatch.setattr(outage, "wait_or_stop", counted)
    await asyncio.to_thread(own_postgres.stop)
    with capture_logs() as logs:
        async with rebuilding(settings) as (task, _):
            async with asyncio.timeout(120):
                while pauses < failed_attempts:
                    assert not task.done()
                    await asyncio.sleep(0.02)
            await asyncio.to_thread(own_postgres.start)
            outcome = await asyncio.wait_for(asyncio.shield(task), 120)
    assert outcome is not None
    assert outcome.rebuilt
    return outcome, logs, pauses
