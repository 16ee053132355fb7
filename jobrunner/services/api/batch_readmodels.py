"""Queries on the batch read models (the projector writes them, see projector/batchcounts.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from jobrunner.common.database import READ_SCHEMA
from jobrunner.services.api import readmodels, schemas
from jobrunner.services.api.newest_first import (
    NewestFirstCursor,
    NewestFirstFilter,
    newest_first_page,
)
from jobrunner.services.api.readpool import ReadPool
from jobrunner.services.api.sqlconditions import Conditions

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
class BatchFilter(NewestFirstFilter):
    """What GET /api/batches filters on (``job_types``: batches holding any of these types)."""


async def list_batches(
    pool: ReadPool,
    limit: int,
    filters: BatchFilter = BatchFilter(),
    after: NewestFirstCursor | None = None,
) -> tuple[list[asyncpg.Record], int]:
    """One page of batches, newest first, and the stream sequence the read models were at."""
    where = filters.shared_conditions()
    if filters.archived is not None:
        where.add(f"archived = {where.arg(filters.archived)}")
    if filters.job_types:
        where.add(f"job_types && {where.arg(list(filters.job_types))}::text[]")
    if filters.search:
        where.add_search(BATCH_SEARCH_EXPRESSION, filters.search)
    return await newest_first_page(pool, BATCH_COLUMNS, "batches", where, after, limit)


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
    where = Conditions()
    where.add(f"batch_id = {where.arg(batch_id)}")
    if not all_attempts:
        where.add("latest")
    if requested_by is not None:
        where.add(f"requested_by = {where.arg(requested_by)}")
    if after is not None:
        place = ", ".join(where.arg(v) for v in (after.batch_index, after.attempt, after.id))
        where.add(f"({_PLACE}, attempt, id) > ({place})")
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {readmodels.JOB_COLUMNS} FROM {READ_SCHEMA}.jobs {where.clause()} "
        f"ORDER BY {_PLACE}, attempt, id LIMIT {where.arg(limit)}",
        *where.args,
    )
    return rows


def job_cursor(row: asyncpg.Record) -> BatchJobCursor:
    index = row["batch_index"]
    return BatchJobCursor(-1 if index is None else index, row["attempt"], row["id"])
