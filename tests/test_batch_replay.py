"""Replay rebuilds batches identically: a history of batches with restarts, failures, archiving
and attempts, projected live, then replayed from sequence 1 and compared row by row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.services.projector.replay import ReplayMismatch, replay
from tests.batch_support import attempt, batch_events, ended
from tests.history_support import BASE_TIME, publish, reading_system, wait_projected
from tests.system import System


def acted_on_batches() -> list[Any]:
    """Four batches: one completed; one failed by hand, then its unfinished jobs restarted; one
    restarted whole while a job ran; one archived with an archived job."""
    at = BASE_TIME + timedelta(minutes=10)
    out: list[Any] = []
    out += batch_events("done", 3)
    for i in range(3):
        out += ended(f"done-{i}", JobStatus.COMPLETED, at)
    out += batch_events("stopped", 3, at=BASE_TIME + timedelta(minutes=1))
    out += ended("stopped-0", JobStatus.COMPLETED, at)
    out.append(events.StatusChanged(job_id="stopped-1", status=JobStatus.RUNNING))
    out.append(events.BatchFailed(batch_id="stopped", reason="wrong input", requested_by="op"))
    out.append(events.CancelRequested(job_id="stopped-1", requested_by="op"))
    out.append(
        events.StatusChanged(
            job_id="stopped-1",
            event_id=events.terminal_event_id("stopped-1"),
            status=JobStatus.CANCELLED,
        )
    )
    out.append(
        events.StatusChanged(
            job_id="stopped-2",
            event_id=events.terminal_event_id("stopped-2"),
            status=JobStatus.CANCELLED,
        )
    )
    out.append(events.BatchRestarted(batch_id="stopped", mode="unfinished"))
    out += [attempt("stopped", 1, 2), attempt("stopped", 2, 2)]
    out += ended("stopped-1-a2", JobStatus.FAILED, at)
    out += batch_events("again", 2, at=BASE_TIME + timedelta(minutes=2))
    out.append(events.StatusChanged(job_id="again-0", status=JobStatus.RUNNING))
    out.append(events.BatchRestarted(batch_id="again", mode="all"))
    out.append(events.CancelRequested(job_id="again-0"))
    out += [attempt("again", 0, 2), attempt("again", 1, 2)]
    out.append(
        events.StatusChanged(
            job_id="again-0",
            event_id=events.terminal_event_id("again-0"),
            status=JobStatus.CANCELLED,
        )
    )
    out += ended("again-0-a2", JobStatus.COMPLETED, at)
    out += batch_events("hidden", 1, at=BASE_TIME + timedelta(minutes=3))
    out += ended("hidden-0", JobStatus.COMPLETED, at)
    out.append(events.BatchArchived(batch_id="hidden"))
    out.append(events.JobArchived(job_id="hidden-0"))
    return out


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[System]:
    last = await publish(settings, acted_on_batches())
    async with reading_system(settings) as system:
        await wait_projected(settings, last)
        yield system


async def batch_rows(settings: Settings) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT * FROM readmodel.batches")
    finally:
        await conn.close()
    return {r["id"]: r for r in rows}


async def test_replay_rebuilds_batches_and_attempts_identically(
    live: System, settings: Settings
) -> None:
    """After restarts, a failure, attempts and archiving, a replay rebuilds every batch and job
    row exactly as the live projector left them."""
    before = await batch_rows(settings)
    report = await replay(settings)
    after = await batch_rows(settings)
    assert report.differences == {}
    assert report.tables["batches"] == 4
    assert after == before
    summary = {
        b: (r["status"], r["completed_jobs"], r["failed_jobs"], r["pending_jobs"], r["archived"])
        for b, r in after.items()
    }
    assert summary == {
        "done": ("completed", 3, 0, 0, False),
        "stopped": ("running", 1, 1, 1, False),
        "again": ("running", 1, 0, 1, False),
        "hidden": ("completed", 1, 0, 0, True),
    }


async def test_replay_refuses_a_batch_row_changed_behind_the_projector(
    live: System, settings: Settings
) -> None:
    """A batch counter changed by hand is found by the replay's comparison: nothing is swapped."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("UPDATE readmodel.batches SET completed_jobs = 99 WHERE id = 'done'")
    finally:
        await conn.close()
    with pytest.raises(ReplayMismatch) as raised:
        await replay(settings)
    assert raised.value.differences["batches"] == ["only live done", "only rebuilt done"]
    assert raised.value.differing_columns == {"batches": ("done", ["completed_jobs"])}
