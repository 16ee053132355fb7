"""Batch read models: counters, status and attempts projected exactly, whatever the order of the
events and however the stream is cut into transactions (the live projector and a replay agree)."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from jobrunner.common import database
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.services.projector import setaside, store
from jobrunner.services.projector.projections import Unreadable, project
from jobrunner.services.projector.setaside import StoredMessage

AT = datetime(2026, 3, 1, tzinfo=UTC)
Event = events.Event | events.BatchEvent


@pytest.fixture
async def conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(settings.database_url)
    await database.init_connection(connection)
    await store.create_schema(connection)
    try:
        yield connection
    finally:
        await connection.close()


async def apply(
    conn: asyncpg.Connection, stream: Sequence[Event], cuts: Sequence[int] = (), first: int = 1
) -> int:
    """Apply ``stream`` from sequence ``first`` on, one transaction per piece between ``cuts``."""
    numbered = [(seq, project(e, seq)) for seq, e in enumerate(stream, start=first)]  # type: ignore[arg-type]
    bounds = [0, *sorted(set(cuts)), len(numbered)]
    for start, end in itertools.pairwise(bounds):
        if end > start:
            await store.apply_batch(conn, numbered[start:end])
    return first + len(stream) - 1


def requested(batch_id: str, total: int, name: str = "Nightly", by: str | None = None) -> Event:
    return events.BatchRequested(
        batch_id=batch_id,
        batch_name=name,
        total_jobs=total,
        job_types=["scraper"],
        requested_by=by,
        occurred_at=AT,
    )


def job(batch_id: str, index: int, attempt: int = 1, first: str | None = None) -> Event:
    job_id = f"{batch_id}-{index}" if attempt == 1 else f"{batch_id}-{index}-a{attempt}"
    return events.JobRequested(
        job_id=job_id,
        job_type="scraper",
        batch_id=batch_id,
        batch_index=index,
        attempt=attempt,
        attempt_of=first,
        occurred_at=AT + timedelta(seconds=index),
    )


def status(job_id: str, to: JobStatus, second: int = 100) -> Event:
    return events.StatusChanged(
        job_id=job_id,
        status=to,
        event_id=events.terminal_event_id(job_id) if to.is_terminal else events.new_event_id(),
        occurred_at=AT + timedelta(seconds=second),
    )


def batch_of(batch_id: str, total: int) -> list[Event]:
    return [
        requested(batch_id, total),
        *(job(batch_id, i) for i in range(total)),
        events.BatchSealed(batch_id=batch_id, total_jobs=total, occurred_at=AT),
    ]


async def batch_row(conn: asyncpg.Connection, batch_id: str) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT * FROM readmodel.batches WHERE id = $1", batch_id)
    assert row is not None
    return dict(row)


COUNTERS = ("pending_jobs", "processing_jobs", "completed_jobs", "failed_jobs", "cancelled_jobs")


def counters(row: dict[str, Any]) -> tuple[int, ...]:
    return tuple(row[c] for c in COUNTERS)


async def test_counters_equal_the_jobs_states_after_a_thousand_job_batch(
    conn: asyncpg.Connection,
) -> None:
    """After a 1,000-job batch ends, its counters are exactly its jobs' statuses, 100 % done."""
    rng = random.Random(13)
    stream = batch_of("big", 1000)
    ends = [JobStatus.COMPLETED] * 900 + [JobStatus.FAILED] * 70 + [JobStatus.CANCELLED] * 30
    rng.shuffle(ends)
    for i, end in enumerate(ends):
        stream.append(status(f"big-{i}", JobStatus.RUNNING, second=i))
        stream.append(status(f"big-{i}", end, second=2000 + i))
    cuts = rng.sample(range(1, len(stream)), 40)
    await apply(conn, stream, cuts)
    row = await batch_row(conn, "big")
    real = await conn.fetch(
        "SELECT status, count(*) FROM readmodel.jobs WHERE batch_id = 'big' GROUP BY status"
    )
    assert {r["status"]: r["count"] for r in real} == {
        "completed": 900,
        "failed": 70,
        "cancelled": 30,
    }
    assert counters(row) == (0, 0, 900, 70, 30)
    assert row["progress_percent"] == 100.0
    assert row["status"] == "failed"
    assert row["started_at"] == AT
    assert row["finished_at"] == AT + timedelta(seconds=2999)


CASES: dict[str, tuple[list[tuple[int, JobStatus]], str]] = {
    "nothing started": ([], "pending"),
    "one running": ([(0, JobStatus.RUNNING)], "running"),
    "one ended, others pending": ([(0, JobStatus.COMPLETED)], "running"),
    "all completed": ([(i, JobStatus.COMPLETED) for i in range(3)], "completed"),
    "one failed": (
        [(0, JobStatus.COMPLETED), (1, JobStatus.FAILED), (2, JobStatus.CANCELLED)],
        "failed",
    ),
    "one cancelled, none failed": (
        [(0, JobStatus.COMPLETED), (1, JobStatus.CANCELLED), (2, JobStatus.COMPLETED)],
        "cancelled",
    ),
    "failed job while others run": (
        [(0, JobStatus.FAILED), (1, JobStatus.RUNNING)],
        "running",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_batch_status_is_derived_from_its_latest_attempts(
    conn: asyncpg.Connection, case: str
) -> None:
    """The batch status follows the README's table for each mix of job statuses."""
    ends, expected = CASES[case]
    stream = batch_of("b", 3)
    for index, to in ends:
        if to.is_terminal:
            stream.append(status(f"b-{index}", JobStatus.RUNNING))
        stream.append(status(f"b-{index}", to))
    await apply(conn, stream)
    row = await batch_row(conn, "b")
    assert row["status"] == expected
    assert (row["finished_at"] is not None) == (expected in ("completed", "failed", "cancelled"))


async def test_a_batch_with_jobs_not_yet_stored_is_not_finished(conn: asyncpg.Connection) -> None:
    """While some of its jobs are not stored yet, a batch whose stored jobs ended still runs."""
    stream = [requested("b", 3), job("b", 0), status("b-0", JobStatus.COMPLETED)]
    await apply(conn, stream)
    row = await batch_row(conn, "b")
    assert (row["status"], row["finished_at"], row["progress_percent"]) == (
        "running",
        None,
        pytest.approx(100 / 3),
    )


async def test_batch_failed_fails_the_batch_until_a_restart(conn: asyncpg.Connection) -> None:
    """A failed batch shows failed with its reason and end, whatever its jobs; a restart takes
    the failure back and the status is derived from the jobs again."""
    failed_at = AT + timedelta(minutes=5)
    stream = [
        *batch_of("b", 2),
        status("b-0", JobStatus.RUNNING),
        events.BatchFailed(
            batch_id="b", reason="wrong input", requested_by="op", occurred_at=failed_at
        ),
    ]
    last = await apply(conn, stream)
    row = await batch_row(conn, "b")
    assert (row["status"], row["failed_reason"], row["failed_by"], row["finished_at"]) == (
        "failed",
        "wrong input",
        "op",
        failed_at,
    )
    await apply(
        conn, [events.BatchRestarted(batch_id="b", mode="all", occurred_at=AT)], first=last + 1
    )
    row = await batch_row(conn, "b")
    assert (row["status"], row["failed_reason"], row["finished_at"]) == ("running", None, None)


async def test_a_new_attempt_replaces_the_previous_one_in_the_counters(
    conn: asyncpg.Connection,
) -> None:
    """A restarted job counts once, as its newest attempt; older attempts stay in history,
    each naming the attempt that replaced it."""
    stream = [
        *batch_of("b", 2),
        status("b-0", JobStatus.RUNNING),
        status("b-0", JobStatus.FAILED),
        status("b-1", JobStatus.RUNNING),
        status("b-1", JobStatus.COMPLETED),
        events.BatchRestarted(batch_id="b", mode="unfinished", job_ids=["b-0"], occurred_at=AT),
        job("b", 0, attempt=2, first="b-0"),
    ]
    last = await apply(conn, stream)
    row = await batch_row(conn, "b")
    assert (row["status"], counters(row)) == ("running", (1, 0, 1, 0, 0))
    last = await apply(
        conn,
        [
            status("b-0-a2", JobStatus.RUNNING),
            status("b-0-a2", JobStatus.FAILED),
            job("b", 0, attempt=3, first="b-0"),
            status("b-0-a3", JobStatus.RUNNING),
            status("b-0-a3", JobStatus.COMPLETED),
        ],
        first=last + 1,
    )
    attempts = await conn.fetch(
        "SELECT id, attempt, attempt_of, latest, superseded_by FROM readmodel.jobs "
        "WHERE batch_index = 0 ORDER BY attempt"
    )
    assert [tuple(r) for r in attempts] == [
        ("b-0", 1, None, False, "b-0-a2"),
        ("b-0-a2", 2, "b-0", False, "b-0-a3"),
        ("b-0-a3", 3, "b-0", True, None),
    ]
    row = await batch_row(conn, "b")
    assert (row["status"], counters(row)) == ("completed", (0, 0, 2, 0, 0))


def ordered_history() -> list[Event]:
    """A batch's life with attempts, a failure, a restart and archiving."""
    return [
        *batch_of("b", 4),
        status("b-0", JobStatus.RUNNING, 10),
        status("b-0", JobStatus.COMPLETED, 20),
        status("b-1", JobStatus.RUNNING, 11),
        status("b-1", JobStatus.FAILED, 21),
        status("b-2", JobStatus.RUNNING, 12),
        events.BatchFailed(batch_id="b", reason="stop", occurred_at=AT + timedelta(seconds=30)),
        events.CancelRequested(job_id="b-2"),
        status("b-2", JobStatus.CANCELLED, 31),
        status("b-3", JobStatus.CANCELLED, 31),
        events.BatchRestarted(batch_id="b", mode="unfinished", occurred_at=AT),
        job("b", 1, attempt=2, first="b-1"),
        job("b", 2, attempt=2, first="b-2"),
        job("b", 3, attempt=2, first="b-3"),
        status("b-1-a2", JobStatus.RUNNING, 40),
        status("b-1-a2", JobStatus.COMPLETED, 50),
        events.BatchArchived(batch_id="b", occurred_at=AT + timedelta(seconds=60)),
        events.JobArchived(job_id="b-0", occurred_at=AT + timedelta(seconds=61)),
        *batch_of("other", 2),
        status("other-0", JobStatus.RUNNING, 70),
    ]


async def tables(conn: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
    batches = await conn.fetch("SELECT * FROM readmodel.batches ORDER BY id")
    jobs = await conn.fetch("SELECT * FROM readmodel.jobs ORDER BY id")
    return [tuple(r) for r in batches], [tuple(r) for r in jobs]


async def test_any_cut_into_transactions_gives_identical_batches(settings: Settings) -> None:
    """However the stream is cut into transactions (live projector or replay), every batch and
    job row comes out identical."""
    stream = ordered_history()
    results = []
    rng = random.Random(4)
    cuttings = [
        [],
        list(range(1, len(stream))),
        *(rng.sample(range(1, len(stream)), 5) for _ in range(4)),
    ]
    for cuts in cuttings:
        connection = await asyncpg.connect(settings.database_url)
        await database.init_connection(connection)
        try:
            await connection.execute("DROP SCHEMA IF EXISTS readmodel CASCADE")
            await store.create_schema(connection)
            await apply(connection, stream, cuts)
            results.append(await tables(connection))
        finally:
            await connection.close()
    assert all(result == results[0] for result in results[1:])
    batches = {row[0]: row for row in results[0][0]}
    assert set(batches) == {"b", "other"}


async def test_the_history_ends_in_the_expected_batch_row(conn: asyncpg.Connection) -> None:
    """After fail, restart of the unfinished jobs and archive, the batch shows its latest
    attempts: two completed, two pending again, archived, no failure."""
    await apply(conn, ordered_history())
    row = await batch_row(conn, "b")
    assert (row["status"], counters(row), row["archived"], row["failed_reason"]) == (
        "running",
        (2, 0, 2, 0, 0),
        True,
        None,
    )
    archived = await conn.fetchval("SELECT archived FROM readmodel.jobs WHERE id = 'b-0'")
    assert archived is True


async def test_jobs_before_their_batch_are_counted_once_it_arrives(
    conn: asyncpg.Connection,
) -> None:
    """Events in odd orders (jobs and their ends before the batch, the seal before the request,
    an attempt before the job it repeats) end in the same counters as in order."""
    odd = [
        job("b", 1, attempt=2, first="b-1"),
        events.BatchSealed(batch_id="b", total_jobs=2, occurred_at=AT),
        job("b", 0),
        status("b-0", JobStatus.RUNNING),
        status("b-0", JobStatus.COMPLETED),
        job("b", 1),
        status("b-1", JobStatus.RUNNING),
        status("b-1", JobStatus.FAILED),
        requested("b", 2),
    ]
    last = await apply(conn, odd, cuts=[1, 3, 5, 7])
    row = await batch_row(conn, "b")
    assert (row["status"], counters(row), row["name"], row["sealed"]) == (
        "running",
        (1, 0, 1, 0, 0),
        "Nightly",
        True,
    )
    assert row["first_seq"] == 2  # the event that made the row; the request came last
    latest = await conn.fetchval(
        "SELECT array_agg(id ORDER BY id) FROM readmodel.jobs WHERE latest"
    )
    assert latest == ["b-0", "b-1-a2"]
    await apply(conn, [status("b-1-a2", JobStatus.COMPLETED)], first=last + 1)
    assert (await batch_row(conn, "b"))["status"] == "completed"


async def test_redelivered_events_change_no_batch(conn: asyncpg.Connection) -> None:
    """Applying the same events again (a redelivery after a crash) leaves every row as it was."""
    stream = ordered_history()
    numbered = [(seq, project(e, seq)) for seq, e in enumerate(stream, start=1)]  # type: ignore[arg-type]
    await store.apply_batch(conn, numbered)
    first = await tables(conn)
    await conn.execute("UPDATE readmodel.checkpoint SET last_seq = 5")
    await store.apply_batch(conn, numbered[5:])
    assert await tables(conn) == first


async def test_a_batch_event_that_cannot_be_stored_is_set_aside(conn: asyncpg.Connection) -> None:
    """A batch event no row can hold (an id beyond the index's limit) is set aside and named;
    the batches after it are projected."""
    huge = os.urandom(6000).hex()  # incompressible: the index entry stays this long

    async def lookup(seq: int) -> StoredMessage | None:
        return StoredMessage(f"t.batch.{seq}.requested", b'{"type":"BatchRequested"}')

    stream = [requested(huge, 1), *batch_of("after", 1)]
    numbered = [(seq, project(e, seq)) for seq, e in enumerate(stream, start=1)]  # type: ignore[arg-type]
    checkpoint = await setaside.apply(conn, numbered, lookup)
    failures = await conn.fetch("SELECT stream_seq, event_type FROM readmodel.projector_failures")
    assert checkpoint == 4
    assert [tuple(r) for r in failures] == [(1, "BatchRequested")]
    assert (await batch_row(conn, "after"))["status"] == "pending"


async def test_a_set_aside_does_not_move_the_checkpoint_past_lost_commits(
    conn: asyncpg.Connection,
) -> None:
    """Postgres came back without commits the projector had acknowledged (the stored checkpoint
    is behind what it committed): setting the next event aside raises CheckpointBehind and
    writes nothing, so the lost events are read again, not skipped for good. Before the fix the
    set-aside moved the checkpoint past them (only apply_batch checked)."""
    stored = await store.checkpoint(conn)

    async def lookup(seq: int) -> StoredMessage | None:
        return StoredMessage("t.job.x.created", b"not an event")

    with pytest.raises(store.CheckpointBehind):
        await setaside.apply(
            conn, [(stored + 6, [Unreadable("not an event")])], lookup, committed=stored + 5
        )
    assert await store.checkpoint(conn) == stored
    failures = await conn.fetchval(
        "SELECT count(*) FROM readmodel.projector_failures WHERE stream_seq = $1", stored + 6
    )
    assert failures == 0
