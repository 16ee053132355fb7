"""Queries on the read models. The API only reads Postgres; it never writes job state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.loglevels import shows_level_sql
from jobrunner.common.terminaltext import visible_sql
from jobrunner.services.api import schemas
from jobrunner.services.api.newest_first import (
    NewestFirstCursor,
    NewestFirstFilter,
    newest_first_page,
)
from jobrunner.services.api.readpool import ReadPool
from jobrunner.services.api.sqlconditions import Conditions

# In this order: ``job_from_row`` unpacks a row by position.
JOB_COLUMN_NAMES = (
    "id",
    "job_type",
    "status",
    "parameters",
    "created_at",
    "started_at",
    "finished_at",
    "exit_code",
    "error_code",
    "error_message",
    "result",
    "log_count",
    "progress_current",
    "progress_total",
    "progress_percent",
    "phase",
    "message",
    "lock",
    "requested_by",
    "cancelled_by",
    "cancel_requested_at",
    "updated_at",
    "first_seq",
    "last_seq",
    "batch_id",
    "batch_index",
    "attempt",
    "attempt_of",
    "latest",
    "archived",
)
JOB_COLUMNS = ", ".join(JOB_COLUMN_NAMES)


def job_from_row(row: Sequence[Any], now: datetime | None = None) -> schemas.Job:
    """The API's view of a row that starts with JOB_COLUMNS (a query may add columns after).

    A list page builds fifty of these per request: the row unpacked by position in one step
    (each ``row["name"]`` is a look-up of its own), positional arguments and plain ``is not
    None`` tests made it about four times cheaper than the keyword form it had, with the same
    Struct (tests/unit/test_readmodels.py holds it to that form)."""
    (
        job_id,
        job_type,
        status,
        parameters,
        created_at,
        started,
        finished,
        exit_code,
        code,
        error_message,
        result,
        log_count,
        current,
        total,
        percent,
        phase,
        message,
        lock,
        requested_by,
        cancelled_by,
        cancel_requested_at,
        updated_at,
        _first_seq,
        _last_seq,
        batch_id,
        batch_index,
        attempt,
        attempt_of,
        latest,
        archived,
        *_,
    ) = row
    duration = None
    if started is not None:
        end = finished or now or datetime.now(UTC)
        duration = round((end - started).total_seconds(), 3)
    progress = None
    if current is not None or percent is not None or phase is not None or message is not None:
        progress = schemas.Progress(current, total, percent, phase, message)
    return schemas.Job(
        job_id,
        job_type,
        status,
        parameters,
        created_at,
        started,
        finished,
        duration,
        exit_code,
        schemas.JobError(code, error_message or "") if code else None,
        result,
        log_count,
        progress,
        lock,
        requested_by,
        cancelled_by,
        cancel_requested_at,
        updated_at,
        batch_id,
        batch_index,
        attempt,
        attempt_of,
        latest,
        archived,
    )


class Reads(Protocol):
    """What the reads below go through: the read pool, or a live stream's bounded reads
    (streamlookups.py)."""

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...


async def get_job_row(pool: Reads, job_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM {READ_SCHEMA}.jobs WHERE id = $1", job_id
    )


async def applied_seq(pool: Reads) -> int:
    """The stream sequence the read models reflect (the projector's checkpoint)."""
    return int(
        await pool.fetchval(f"SELECT last_seq FROM {READ_SCHEMA}.checkpoint WHERE id = 1") or 0
    )


# Free-text search runs over this expression; the trigram index jobs_search_idx in
# services/projector/search_index.sql is built on exactly the same text.
SEARCH_EXPRESSION = "(job_type || ' ' || parameters::text || ' ' || coalesce(result::text, ''))"


@dataclass(frozen=True)
class JobFilter(NewestFirstFilter):
    """What GET /api/jobs filters on; every field already validated."""

    batch_id: str | None = None


async def list_jobs(
    pool: ReadPool,
    limit: int,
    filters: JobFilter = JobFilter(),
    after: NewestFirstCursor | None = None,
) -> tuple[list[asyncpg.Record], int]:
    """One page of jobs, newest first, and the stream sequence the read models were at."""
    where = filters.shared_conditions()
    if filters.job_types:
        where.add(f"job_type = ANY({where.arg(list(filters.job_types))}::text[])")
    if filters.batch_id is not None:
        where.add(f"batch_id = {where.arg(filters.batch_id)}")
    if filters.archived is not None:
        where.add("archived" if filters.archived else "NOT archived")
    if filters.search:
        where.add_search(SEARCH_EXPRESSION, filters.search)
    return await newest_first_page(pool, JOB_COLUMNS, "jobs", where, after, limit)


# --- log lines


@dataclass(frozen=True)
class LineFilter:
    levels: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    search: str | None = None


def _line_conditions(job_id: str, filters: LineFilter) -> Conditions:
    where = Conditions()
    where.add(f"job_id = {where.arg(job_id)}")
    if filters.levels:
        where.add(f"level = ANY({where.arg(list(filters.levels))}::text[])")
    if filters.streams:
        where.add(f"stream = ANY({where.arg(list(filters.streams))}::text[])")
    if filters.search:
        where.add_search("text", filters.search)
    return where


LINE_COLUMNS = "seq, stream, level, ts, text"


async def log_lines_after(
    pool: ReadPool, job_id: str, after: int, limit: int, filters: LineFilter
) -> list[asyncpg.Record]:
    """Lines with ``seq > after``, oldest first."""
    where = _line_conditions(job_id, filters)
    where.add(f"seq > {where.arg(after)}")
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {LINE_COLUMNS} FROM {READ_SCHEMA}.log_lines "
        f"{where.clause()} ORDER BY seq LIMIT {where.arg(limit)}",
        *where.args,
    )
    return rows


async def log_lines_tail(
    pool: ReadPool, job_id: str, count: int, filters: LineFilter
) -> list[asyncpg.Record]:
    """The last ``count`` lines, oldest first."""
    where = _line_conditions(job_id, filters)
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT {LINE_COLUMNS} FROM {READ_SCHEMA}.log_lines "
        f"{where.clause()} ORDER BY seq DESC LIMIT {where.arg(count)}",
        *where.args,
    )
    return rows[::-1]


# One line of a downloaded log: ISO 8601 UTC time, level, text. The level column is left out
# where the stored text starts with exactly that level (``INFO    Starte ...``), which would show
# it twice; the second field of every line is then still its level. The text is shown as the
# terminal commands print it (``terminaltext.visible``): a download is opened in a terminal or an
# editor, where a BEL would ring, a BS overwrite, an old line's ESC c reset the screen, and a
# colour code (kept in the log for the web UI) is noise. Formatted by Postgres, a chunk at a
# time, so a million-line log never sits in the API's memory.
_DOWNLOAD_LINE = (
    "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || ' ' "
    f"|| CASE WHEN {shows_level_sql('text', 'level')} THEN '' ELSE rpad(level, 7) || ' ' END "
    f"|| {visible_sql('text')} || E'\\n'"
)


async def log_text_chunks(
    pool: ReadPool, job_id: str, chunk_lines: int = 20_000
) -> AsyncIterator[bytes]:
    """The whole log as text, in chunks of ``chunk_lines`` lines (keyset pages on ``seq``).

    The connection goes back to the pool between chunks, so a slow client holds none.
    """
    after = 0
    while True:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                f"""
                SELECT max(seq) AS last, string_agg(line, '' ORDER BY seq) AS body FROM (
                    SELECT seq, {_DOWNLOAD_LINE} AS line FROM {READ_SCHEMA}.log_lines
                    WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
                ) AS chunk
                """,
                job_id,
                after,
                chunk_lines,
            )
        if row is None or row["last"] is None:
            return
        yield row["body"].encode()
        after = row["last"]


WEBHOOK_ATTEMPT_COLUMNS = """
    delivery_id, webhook_index, url, attempt, outcome, status_code, error_code, error_message,
    duration_ms, attempted_at
"""


async def webhook_attempts(pool: ReadPool, job_id: str, limit: int) -> list[asyncpg.Record]:
    """The job's last ``limit`` webhook attempts, by webhook and then attempt number."""
    rows: list[asyncpg.Record] = await pool.fetch(
        f"SELECT * FROM (SELECT {WEBHOOK_ATTEMPT_COLUMNS} FROM {READ_SCHEMA}.webhook_deliveries "
        "WHERE job_id = $1 ORDER BY attempted_at DESC, attempt DESC LIMIT $2) AS newest "
        "ORDER BY webhook_index, attempt",
        job_id,
        limit,
    )
    return rows


def webhook_log(job_id: str, rows: list[asyncpg.Record]) -> schemas.WebhookLog:
    items = [
        schemas.WebhookAttempt(
            delivery_id=r["delivery_id"],
            webhook_index=r["webhook_index"],
            url=r["url"],
            attempt=r["attempt"],
            outcome=r["outcome"],
            status_code=r["status_code"],
            error=(
                schemas.JobError(code=r["error_code"], message=r["error_message"] or "")
                if r["error_code"]
                else None
            ),
            duration_ms=r["duration_ms"],
            attempted_at=r["attempted_at"],
        )
        for r in rows
    ]
    deliveries: dict[str, schemas.WebhookDelivery] = {}
    counts: dict[str, int] = {}
    for item in items:  # by attempt number: the last one seen is the delivery's state
        counts[item.delivery_id] = counts.get(item.delivery_id, 0) + 1
        deliveries[item.delivery_id] = schemas.WebhookDelivery(
            delivery_id=item.delivery_id,
            webhook_index=item.webhook_index,
            url=item.url,
            state=item.outcome,
            attempts=max(item.attempt, counts[item.delivery_id]),
            last_status_code=item.status_code,
            last_error=item.error,
            last_attempt_at=item.attempted_at,
        )
    ordered = sorted(deliveries.values(), key=lambda d: d.webhook_index)
    return schemas.WebhookLog(job_id=job_id, deliveries=ordered, items=items)


ARTIFACT_COLUMNS = "name, size, content_type, sha256, object_name, stored_at"


async def list_artifacts(pool: ReadPool, job_id: str) -> list[asyncpg.Record]:
    """A job's artifacts, by name."""
    return list(
        await pool.fetch(
            f"SELECT {ARTIFACT_COLUMNS} FROM {READ_SCHEMA}.artifacts WHERE job_id = $1 "
            "ORDER BY name",
            job_id,
        )
    )


async def get_artifact(pool: ReadPool, job_id: str, name: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        f"SELECT {ARTIFACT_COLUMNS} FROM {READ_SCHEMA}.artifacts WHERE job_id = $1 AND name = $2",
        job_id,
        name,
    )
