"""The projector is idempotent: redelivered events never duplicate a row."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from jobrunner.common import database
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.services.projector import store, timestamps
from jobrunner.services.projector.projections import project


def job_events(job_id: str) -> list[events.Event]:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        events.JobRequested(job_id=job_id, job_type="scraper", parameters={"plz_filter": "4"}),
        events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING),
        events.LineLogged(
            job_id=job_id,
            lines=[events.LogLine(i, "stdout", "INFO", at, f"line {i}") for i in (1, 2, 3)],
        ),
        events.ProgressReported(job_id=job_id, current=3, total=10),
        events.LineLogged(job_id=job_id, lines=[events.LogLine(4, "stderr", "ERROR", at, "oh")]),
        events.StatusChanged(
            job_id=job_id,
            event_id=events.terminal_event_id(job_id),
            status=JobStatus.COMPLETED,
            exit_code=0,
        ),
    ]


async def snapshot(conn: asyncpg.Connection) -> tuple[list[tuple], list[tuple], int]:
    jobs = [tuple(r) for r in await conn.fetch("SELECT * FROM readmodel.jobs ORDER BY id")]
    lines = [
        tuple(r) for r in await conn.fetch("SELECT * FROM readmodel.log_lines ORDER BY job_id, seq")
    ]
    return jobs, lines, await store.checkpoint(conn)


async def test_applying_the_same_events_twice_changes_nothing(settings: Settings) -> None:
    """Redelivering a batch (after a crash before the ack) leaves every table exactly as it was."""
    batch = [(seq, project(e, seq)) for seq, e in enumerate(job_events("job-1"), start=1)]
    conn = await asyncpg.connect(settings.database_url)
    await database.init_connection(conn)
    try:
        await store.create_schema(conn)
        await store.apply_batch(conn, batch)
        first = await snapshot(conn)
        await store.apply_batch(conn, batch)
        await store.apply_batch(conn, batch[2:4])  # a partial redelivery too
        second = await snapshot(conn)
        status, log_count = await conn.fetchrow("SELECT status, log_count FROM readmodel.jobs")
    finally:
        await conn.close()
    assert first == second
    jobs, lines, checkpoint = first
    assert checkpoint == 6
    assert len(jobs) == 1
    assert len(lines) == 4
    assert (status, log_count) == ("completed", 4)


async def test_a_late_running_status_never_revives_an_ended_job(settings: Settings) -> None:
    """The first terminal status wins: events arriving after it do not change the job's status."""
    job_id = "job-2"
    requested, running, *_rest, completed = job_events(job_id)
    late = events.StatusChanged(job_id=job_id, status=JobStatus.FAILED, exit_code=1)
    ordered = [requested, running, completed, running, late]
    batch = [(seq, project(e, seq)) for seq, e in enumerate(ordered, start=1)]
    conn = await asyncpg.connect(settings.database_url)
    await database.init_connection(conn)
    try:
        await store.create_schema(conn)
        await store.apply_batch(conn, batch)
        row = await conn.fetchrow(
            "SELECT status, exit_code FROM readmodel.jobs WHERE id = $1", job_id
        )
    finally:
        await conn.close()
    assert (row["status"], row["exit_code"]) == ("completed", 0)


async def test_a_line_stored_twice_in_the_stream_is_shown_and_counted_once(
    settings: Settings,
) -> None:
    """A runner that re-publishes lines after the de-duplication window puts the same line in the
    stream twice, under a new event id: the log shows it once and the job counts it once, whether
    the copies arrive in one batch or in two."""
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def lines(job_id: str, seqs: range) -> events.LineLogged:
        return events.LineLogged(
            job_id=job_id,
            lines=[events.LogLine(i, "stdout", "INFO", at, f"line {i}") for i in seqs],
        )

    stream: list[events.Event] = []
    for job_id in ("same-batch", "next-batch"):
        stream += [
            events.JobRequested(job_id=job_id, job_type="scraper"),
            lines(job_id, range(1, 4)),
            lines(job_id, range(3, 6)),  # line 3 again
        ]
    batch = [(seq, project(e, seq)) for seq, e in enumerate(stream, start=1)]
    conn = await asyncpg.connect(settings.database_url)
    await timestamps.init_connection(conn)  # the projector's: the lines' times in an array too
    try:
        await store.create_schema(conn)
        await store.apply_batch(conn, batch[:3])  # "same-batch": both copies in one batch
        await store.apply_batch(conn, batch[3:5])  # "next-batch": the copy comes later
        await store.apply_batch(conn, batch[5:])
        counts = dict(await conn.fetch("SELECT id, log_count FROM readmodel.jobs"))
        stored = await conn.fetch(
            "SELECT job_id, array_agg(seq ORDER BY seq) AS seqs FROM readmodel.log_lines "
            "GROUP BY job_id"
        )
        times = await conn.fetchval("SELECT array_agg(DISTINCT ts) FROM readmodel.log_lines")
    finally:
        await conn.close()
    assert counts == {"same-batch": 5, "next-batch": 5}
    assert times == [at]
    assert {r["job_id"]: r["seqs"] for r in stored} == {
        "same-batch": [1, 2, 3, 4, 5],
        "next-batch": [1, 2, 3, 4, 5],
    }
