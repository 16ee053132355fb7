"""An older jobrunner's state: events in the stream and read models of an older layout beside
them, as a jobrunner from before read-model versions left them (tests/fixtures)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from jobrunner.common import readmodelversion
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from tests.history_support import BASE_TIME, job_events, logged_job, publish

OLD_SCHEMA = Path(__file__).parent / "fixtures" / "readmodel_before_versions.sql"


@dataclass(frozen=True)
class History:
    last_seq: int
    lines: dict[str, int]  # job id -> lines it printed
    statuses: dict[str, str]  # job id -> its last status
    batch_id: str


def history(
    jobs: int, lines: int, per_event: int = 10
) -> tuple[list[events.Event | events.BatchEvent], History]:
    """Finished jobs with logs, and a batch of two (a read model the older layout lacks)."""
    stream: list[events.Event | events.BatchEvent] = []
    counts: dict[str, int] = {}
    statuses: dict[str, str] = {}
    for n in range(jobs):
        stream += logged_job(f"old{n}", lines=lines, batch=per_event)
        counts[f"old{n}"] = lines
        statuses[f"old{n}"] = "completed"
    batch_id = "batch-old"
    stream.append(
        events.BatchRequested(
            batch_id=batch_id, batch_name="older", total_jobs=2, occurred_at=BASE_TIME
        )
    )
    for i in range(2):
        job_id = f"{batch_id}-{i}"
        for event in job_events(job_id, status=JobStatus.FAILED, batch_id=batch_id):
            stream.append(event)
        counts[job_id] = 0
        statuses[job_id] = "failed"
    stream.append(events.BatchSealed(batch_id=batch_id, total_jobs=2))
    return stream, History(0, counts, statuses, batch_id)


async def older_state(
    settings: Settings, jobs: int = 5, lines: int = 20, per_event: int = 10
) -> History:
    """The events in the stream, and older read models that an older projector had brought to
    the stream's end (its rows say every job is still pending: only a rebuild makes them true)."""
    stream, made = history(jobs, lines, per_event)
    last = await publish(settings, stream)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(OLD_SCHEMA.read_text().format(schema="readmodel"))
        await conn.executemany(
            "INSERT INTO readmodel.jobs (id, job_type, status, created_at, updated_at, "
            "first_seq, last_seq) VALUES ($1, 'emit', 'pending', $2, $2, 1, 1)",
            [(job_id, BASE_TIME) for job_id in made.lines],
        )
        await conn.execute("UPDATE readmodel.checkpoint SET last_seq = $1", last)
    finally:
        await conn.close()
    return History(last, made.lines, made.statuses, made.batch_id)


async def read_models(settings: Settings) -> dict[str, Any]:
    """What the live read models hold: their version, each job's status and lines, the batch."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        version = await readmodelversion.stored_version(conn)
        jobs = {
            r["id"]: (r["status"], r["log_count"])
            for r in await conn.fetch("SELECT id, status, log_count FROM readmodel.jobs")
        }
        lines = dict(
            await conn.fetch("SELECT job_id, count(*) FROM readmodel.log_lines GROUP BY job_id")
        )
        checkpoint = await conn.fetchval("SELECT last_seq FROM readmodel.checkpoint")
        batches = []
        if await conn.fetchval("SELECT to_regclass('readmodel.batches') IS NOT NULL"):
            batches = [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT id, status, total_jobs, failed_jobs FROM readmodel.batches"
                )
            ]
        schemas = {
            r["nspname"]
            for r in await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'readmodel%'"
            )
        }
    finally:
        await conn.close()
    return {
        "version": version,
        "jobs": jobs,
        "lines": lines,
        "checkpoint": checkpoint,
        "batches": batches,
        "schemas": schemas,
    }


def complete(found: dict[str, Any], made: History) -> list[str]:
    """How the read models differ from what the events say (empty: they are complete)."""
    problems = []
    if found["version"] != readmodelversion.READMODEL_VERSION:
        problems.append(f"version {found['version']}")
    expected_jobs = {j: (made.statuses[j], n) for j, n in made.lines.items()}
    if found["jobs"] != expected_jobs:
        problems.append(f"jobs {found['jobs']} != {expected_jobs}")
    expected_lines = {j: n for j, n in made.lines.items() if n}
    if found["lines"] != expected_lines:
        problems.append(f"lines {found['lines']} != {expected_lines}")
    if found["checkpoint"] < made.last_seq:
        problems.append(f"checkpoint {found['checkpoint']} < {made.last_seq}")
    if found["batches"] != [(made.batch_id, "failed", 2, 2)]:
        problems.append(f"batches {found['batches']}")
    return problems


async def wait_version(settings: Settings, version: int, timeout: float = 60.0) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with asyncio.timeout(timeout):
            while True:
                if await readmodelversion.stored_version(conn) == version:
                    return
                await asyncio.sleep(0.05)
    finally:
        await conn.close()
