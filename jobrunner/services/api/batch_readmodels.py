"""Queries on the batch read models (the projector writes them, see projector/batchcounts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from jobrunner.common.database import READ_SCHEMA
from jobrunner.services.api import readmodels, schemas
from jobrunner.services.api.readpool import ReadPool

BATCH_COLUMNS = """
    id, name, status, total_jobs, pending_jobs, processing_jobs, completed_jobs, failed_jobs,
    cancelled_jobs, progress_percent, job_types, archived, failed_reason, requested_by,
    created_at, started_at, finished_at, updated_at, last_seq
"""
BATCH_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
# Free-text search over a batch's name and id; the trigram index batches_search_idx in
# services/projector/search_index.sql is built on exactly the same text.
BATCH_SEARCH_EXPRESSION = "(coalesce(name, '') || ' ' || id)"


def batch_from_row(row: asyncpg.Record) -> schemas.Batch:
    return schemas.Batch(
        id=row["id"],
        name=row["name"],
        status=row["status"],
        total_jobs=row["total_jobs"],
        pending_jobs=row["pending_jobs"],
        processing_jobs=row["processing_jobs"],
        completed_jobs=row["completed_jobs"],
        failed_jobs=row["failed_jobs"],
        cancelled_jobs=row["cancelled_jobs"],
        progress_percent=row["progress_percent"],
        job_types=list(row["job_types"]),
        archived=row["archived"],
        failed_reason=row["failed_reason"],
        requested_by=row["requested_by"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
    )


@dataclass(frozen=True)
class BatchFilter:
    """What GET /api/batches filters on; every field already validated."""

    statuses: tuple[str, ...] = ()
    job_types: tuple[str, ...] = ()  # batches holding any of these types
    search: str | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    archived: bool | None = False  # None: archived or not
    requested_by: str | None = None  # set for a token limited to its own jobs


@dataclass(frozen=True)
class BatchCursor:
    """The position after the last batch of a page: its (created_at, id)."""

    created_at: datetime
    id: str


async def list_batches(
    pool: ReadPool,
    limit: int,
    filters: BatchFilter = BatchFilter(),
    after: BatchCursor | None = None,
) -> tuple[list[asyncpg.Record], int]:
    """One page of batches, newest first, and the stream sequence the read models were at.

    Keyset pagination on ``(created_at, id)``: a page never shifts when new batches arrive.
    """
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if filters.statuses:
        where.append(f"status = ANY({arg(list(filters.statuses))}::text[])")
    if filters.archived is not None:
        where.append(f"archived = {arg(filters.archived)}")
    if filters.job_types:
        where.append(f"job_types && {arg(list(filters.job_types))}::text[]")
    if filters.created_from is not None:
        where.append(f"created_at >= {arg(filters.created_from)}")
    if filters.created_to is not None:
        where.append(f"created_at < {arg(filters.created_to)}")
    if filters.requested_by is not None:
        where.append(f"requested_by = {arg(filters.requested_by)}")
    if filters.search:
        pattern = arg(readmodels.like_pattern(filters.search))
        where.append(f"{BATCH_SEARCH_EXPRESSION} ILIKE {pattern}")
    if after is not None:
        where.append(f"(created_at, id) < ({arg(after.created_at)}, {arg(after.id)})")
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    query = (
        f"SELECT {BATCH_COLUMNS} FROM {READ_SCHEMA}.batches {clause} "
        f"ORDER BY created_at DESC, id DESC LIMIT {arg(limit)}"
    )
    return await readmodels.page_and_checkpoint(pool, query, args)


async def get_batch_row(pool: ReadPool | asyncpg.Connection, batch_id: str) -> Any:
    return await pool.fetchrow(
        f"SELECT {BATCH_COLUMNS} FROM {READ_SCHEMA}.batches WHERE id = $1", batch_id
    )


@dataclass(frozen=True)
class BatchJobCursor:
    """The position after the last job of a batch page: its place, attempt and id."""

    batch_index: int
    attempt: int
    id: str


# A job's place in its batch as the index jobs_batch_place_idx holds it (schema.sql).
_PLACE = "coalesce(batch_index, -1)"


async def batch_jobs(
    pool: ReadPool,
    batch_id: str,
    limit: int,
    all_attempts: bool = False,
    after: BatchJobCursor | None = None,
    requested_by: str | None = None,
) -> list[asyncpg.Record]:
    """A page of a batch's jobs in batch order: the latest attempts, or every attempt (each
    job's attempts in order) when ``all_attempts``."""
    where = ["batch_id = $1"]
    args: list[Any] = [batch_id]
    if not all_attempts:
        where.append("latest")
    if requested_by is not None:
        args.append(requested_by)
        where.append(f"requested_by = ${len(args)}")
    if after is not None:
        args += [after.batch_index, after.attempt, after.id]
        n = len(args)
        where.append(f"({_PLACE}, attempt, id) > (${n - 2}, ${n - 1}, ${n})")
    args.append(limit)
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {readmodels.JOB_COLUMNS} FROM {READ_SCHEMA}.jobs WHERE {' AND '.join(where)} "
        f"ORDER BY {_PLACE}, attempt, id LIMIT ${len(args)}",
        *args,
    )
    return rows


def job_cursor(row: asyncpg.Record) -> BatchJobCursor:
    index = row["batch_index"]
    return BatchJobCursor(-1 if index is None else index, row["attempt"], row["id"])
