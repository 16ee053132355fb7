"""Queries on the read models. The API only reads Postgres; it never writes job state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from jobrunner.database import READ_SCHEMA
from services.api import schemas

JOB_COLUMNS = """
    id, job_type, status, parameters, created_at, started_at, finished_at, exit_code,
    error_code, error_message, result, log_count, progress_current, progress_total,
    progress_percent, phase, message, lock, requested_by, cancelled_by, cancel_requested_at,
    updated_at, first_seq, last_seq
"""


def job_from_row(row: asyncpg.Record, now: datetime | None = None) -> schemas.Job:
    started, finished = row["started_at"], row["finished_at"]
    duration = None
    if started is not None:
        end = finished or now or datetime.now(UTC)
        duration = round((end - started).total_seconds(), 3)
    progress = None
    if any(
        row[c] is not None for c in ("progress_current", "progress_percent", "phase", "message")
    ):
        progress = schemas.Progress(
            current=row["progress_current"],
            total=row["progress_total"],
            percent=row["progress_percent"],
            phase=row["phase"],
            message=row["message"],
        )
    error = (
        schemas.JobError(code=row["error_code"], message=row["error_message"] or "")
        if row["error_code"]
        else None
    )
    return schemas.Job(
        id=row["id"],
        job_type=row["job_type"],
        status=row["status"],
        parameters=row["parameters"],
        created_at=row["created_at"],
        started_at=started,
        finished_at=finished,
        duration_seconds=duration,
        exit_code=row["exit_code"],
        error=error,
        result=row["result"],
        log_count=row["log_count"],
        progress=progress,
        lock=row["lock"],
        requested_by=row["requested_by"],
        cancelled_by=row["cancelled_by"],
        cancel_requested_at=row["cancel_requested_at"],
        updated_at=row["updated_at"],
    )


async def get_job_row(pool: asyncpg.Pool, job_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM {READ_SCHEMA}.jobs WHERE id = $1", job_id
    )


async def list_jobs(
    pool: asyncpg.Pool,
    limit: int,
    statuses: list[str] | None = None,
    job_types: list[str] | None = None,
) -> list[asyncpg.Record]:
    where: list[str] = []
    args: list[Any] = []
    if statuses:
        args.append(statuses)
        where.append(f"status = ANY(${len(args)}::text[])")
    if job_types:
        args.append(job_types)
        where.append(f"job_type = ANY(${len(args)}::text[])")
    args.append(limit)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return await pool.fetch(
        f"SELECT {JOB_COLUMNS} FROM {READ_SCHEMA}.jobs {clause} "
        f"ORDER BY created_at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
