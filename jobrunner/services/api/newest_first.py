"""Pages of a read model's rows, newest first: the lists of jobs and of batches.

Keyset pagination on ``(created_at, id)``: a page never shifts when new rows arrive, and a page
comes back with the stream sequence the read models were at, from the same snapshot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from jobrunner.common.database import READ_SCHEMA
from jobrunner.services.api.queryparams import Query, keyset_page
from jobrunner.services.api.readpool import ReadPool
from jobrunner.services.api.sqlconditions import Conditions


@dataclass(frozen=True)
class NewestFirstCursor:
    """The position after the last row of a page: its (created_at, id)."""

    created_at: datetime
    id: str

    @classmethod
    def after_row(cls, row: asyncpg.Record) -> NewestFirstCursor:
        return cls(row["created_at"], row["id"])


@dataclass(frozen=True)
class NewestFirstFilter:
    """What a newest-first list filters on; every field already validated."""

    statuses: tuple[str, ...] = ()
    job_types: tuple[str, ...] = ()
    search: str | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    # Set for a token limited to its own jobs (``Principal.owner``).
    requested_by: str | None = None
    # Archived rows are left out unless asked for (True: only them; None: all).
    archived: bool | None = False

    def shared_conditions(self) -> Conditions:
        """The conditions every listed read model takes alike: status, creation time, owner.
        (Job types, archived and search are columns of another shape in each.)"""
        where = Conditions()
        if self.statuses:
            where.add(f"status = ANY({where.arg(list(self.statuses))}::text[])")
        if self.created_from is not None:
            where.add(f"created_at >= {where.arg(self.created_from)}")
        if self.created_to is not None:
            where.add(f"created_at < {where.arg(self.created_to)}")
        if self.requested_by is not None:
            where.add(f"requested_by = {where.arg(self.requested_by)}")
        return where


async def newest_first_page(
    pool: ReadPool,
    columns: str,
    table: str,
    conditions: Conditions,
    after: NewestFirstCursor | None,
    limit: int,
) -> tuple[Rows, int]:
    """Up to ``limit`` rows of ``table`` that meet ``conditions``, after ``after``, newest
    first, and the stream sequence the read models were at."""
    if after is not None:
        conditions.add(
            f"(created_at, id) < ({conditions.arg(after.created_at)}, {conditions.arg(after.id)})"
        )
    query = (
        f"SELECT {columns} FROM {READ_SCHEMA}.{table} {conditions.clause()} "
        f"ORDER BY created_at DESC, id DESC LIMIT {conditions.arg(limit)}"
    )
    return await page_and_checkpoint(pool, query, conditions.args)


Rows = list[asyncpg.Record]


async def requested_page(
    query: Query,
    max_limit: int,
    fetch: Callable[[int, NewestFirstCursor | None], Awaitable[tuple[Rows, int]]],
) -> tuple[Rows, str | None, int]:
    """The page a list request asks for (``limit``, default 50, and ``cursor``), fetched by
    ``fetch(limit, after)``: its rows, the next page's cursor (None on the last page) and the
    stream sequence the read models were at."""
    page_size = query.integer("limit", 50, 1, max_limit) or 50
    after = query.cursor("cursor", NewestFirstCursor)
    # One row more than the page, to learn whether another page follows.
    rows, applied = await fetch(page_size + 1, after)
    page, next_cursor = keyset_page(rows, page_size, NewestFirstCursor.after_row)
    return page, next_cursor, applied


async def page_and_checkpoint(
    pool: ReadPool, query: str, args: list[Any]
) -> tuple[list[asyncpg.Record], int]:
    """The rows of ``query`` (a page ordered by ``created_at DESC, id DESC``) and the stream
    sequence the read models were at, from one snapshot.

    One statement, not a transaction of two: a statement sees one snapshot, and a page then costs
    one round trip to Postgres instead of five (begin, the page, the checkpoint, commit, and the
    pool's reset), the biggest part of a list request's time. The checkpoint row always comes
    back, with the page's columns empty when the page is."""
    rows = await pool.fetch(
        f"SELECT page.*, cp.applied_seq FROM "
        f"(SELECT (SELECT last_seq FROM {READ_SCHEMA}.checkpoint) AS applied_seq) AS cp "
        f"LEFT JOIN LATERAL ({query}) AS page ON true "
        "ORDER BY page.created_at DESC, page.id DESC",
        *args,
    )
    applied = rows[0]["applied_seq"] if rows else None
    return [r for r in rows if r["id"] is not None], int(applied or 0)
