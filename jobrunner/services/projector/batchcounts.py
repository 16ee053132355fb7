"""Batch rows: their own fields from batch events, their counters recounted from their jobs.

A batch's counters, status, progress and times are never adjusted by increments: every
transaction that changes a batch's jobs (a job created in it, a status that changed, a newer
attempt) or the batch itself recounts that batch from its jobs' rows before it commits. So the
row is exact at every checkpoint whatever order the events came in (a job's events before its
batch's), a redelivered event cannot count twice, and a replay, which cuts the stream into other
transactions, ends with identical rows: what a row holds depends only on the rows it is counted
from, and its ``updated_at`` and ``last_seq`` only on the events that changed it.

Derived status (README "Batches"): ``failed`` from a BatchFailed until a later BatchRestarted;
otherwise, while any latest attempt is pending or running (or not stored yet), ``running`` once
any of them started or ended, else ``pending``; once all ended: ``failed`` if any failed, else
``cancelled`` if any was cancelled, else ``completed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from jobrunner.services.projector.projections import BatchChanged


@dataclass
class Touched:
    """Batches to recount, each with the last stream sequence and time that changed it."""

    batches: dict[str, tuple[int, datetime]] = field(default_factory=dict)

    def add(self, batch_id: str, seq: int, at: datetime) -> None:
        known = self.batches.get(batch_id)
        if known is None:
            self.batches[batch_id] = (seq, at)
        else:
            self.batches[batch_id] = (max(known[0], seq), max(known[1], at))

    def __bool__(self) -> bool:
        return bool(self.batches)


@dataclass
class BatchWrite:
    """The batch events of one transaction for one batch, merged: applying this once leaves the
    row exactly as applying each event in turn would (a replay cuts the stream elsewhere)."""

    batch_id: str
    fields: dict[str, Any]
    first_at: datetime  # the first event's time and sequence: the row's, if it makes the row
    first_seq: int
    requested_at: datetime | None = None  # the earliest BatchRequested among them, if any
    requested_seq: int | None = None

    def add(self, change: BatchChanged) -> None:
        self.fields.update(change.fields)  # later events win, as they would one at a time
        if change.requested and (
            self.requested_at is None or change.occurred_at < self.requested_at
        ):
            self.requested_at = change.occurred_at
        if change.requested and self.requested_seq is None:
            self.requested_seq = change.stream_seq


def merge(writes: dict[str, BatchWrite], change: BatchChanged) -> None:
    """Add one batch event to the transaction's writes."""
    write = writes.get(change.batch_id)
    if write is None:
        write = writes[change.batch_id] = BatchWrite(
            change.batch_id, {}, change.occurred_at, change.stream_seq
        )
    write.add(change)


async def upsert_batches(
    conn: asyncpg.Connection, schema: str, writes: dict[str, BatchWrite]
) -> None:
    """Write the batch events' fields, creating each row no event made yet: one pipelined
    statement per set of columns (a batch's request, seal, failure ... each set a few)."""
    groups: dict[tuple[str, ...], list[BatchWrite]] = {}
    for write in writes.values():
        groups.setdefault(tuple(write.fields), []).append(write)
    for cols, group in groups.items():
        values = "".join(f", ${i}" for i in range(6, len(cols) + 6))
        sets = "".join(f", {c} = EXCLUDED.{c}" for c in cols)
        # The BatchRequested is the batch's beginning, even when a later event made the row
        # (LEAST ignores the NULL of a transaction without one).
        await conn.executemany(
            f"INSERT INTO {schema}.batches AS b "
            f"(id, created_at, updated_at, first_seq, last_seq{''.join(', ' + c for c in cols)}) "
            f"VALUES ($1, LEAST($2, $4::timestamptz), $2, LEAST($3, $5::bigint), $3{values}) "
            "ON CONFLICT (id) DO UPDATE SET "
            f"created_at = LEAST(b.created_at, $4::timestamptz), "
            f"first_seq = LEAST(b.first_seq, $5::bigint){sets}",
            [
                (
                    w.batch_id,
                    w.first_at,
                    w.first_seq,
                    w.requested_at,
                    w.requested_seq,
                    *w.fields.values(),
                )
                for w in group
            ],
        )


async def decide_latest(conn: asyncpg.Connection, schema: str, roots: set[str]) -> None:
    """Mark, for each first attempt in ``roots``, only its newest attempt ``latest``; every
    older one names the attempt that followed it in ``superseded_by``."""
    await conn.execute(
        f"""
        UPDATE {schema}.jobs AS j
        SET latest = w.next_id IS NULL, superseded_by = w.next_id
        FROM (
            SELECT id, lead(id) OVER (
                PARTITION BY coalesce(attempt_of, id) ORDER BY attempt, id
            ) AS next_id
            FROM {schema}.jobs
            WHERE id = ANY($1::text[]) OR attempt_of = ANY($1::text[])
        ) AS w
        WHERE j.id = w.id
          AND (j.latest IS DISTINCT FROM (w.next_id IS NULL)
               OR j.superseded_by IS DISTINCT FROM w.next_id)
        """,
        sorted(roots),
    )


_ENDED = "(c.completed + c.failed + c.cancelled)"
_ALL_ENDED = f"(c.pending + c.running = 0 AND {_ENDED} >= b.total_jobs)"


async def recount(conn: asyncpg.Connection, schema: str, touched: Touched) -> None:
    """Count the touched batches again from their jobs' rows (see the module docstring)."""
    ids = sorted(touched.batches)  # a fixed order: two writers never deadlock on batch rows
    await conn.execute(
        f"""
        UPDATE {schema}.batches AS b SET
            pending_jobs = c.pending,
            processing_jobs = c.running,
            completed_jobs = c.completed,
            failed_jobs = c.failed,
            cancelled_jobs = c.cancelled,
            progress_percent = CASE WHEN b.total_jobs > 0
                THEN least(100.0, {_ENDED} * 100.0 / b.total_jobs) ELSE 0 END,
            started_at = c.started_at,
            status = CASE
                WHEN b.failed_reason IS NOT NULL THEN 'failed'
                WHEN NOT {_ALL_ENDED} THEN
                    CASE WHEN c.running + {_ENDED} > 0 THEN 'running' ELSE 'pending' END
                WHEN c.failed > 0 THEN 'failed'
                WHEN c.cancelled > 0 THEN 'cancelled'
                ELSE 'completed'
            END,
            finished_at = CASE
                WHEN b.failed_reason IS NOT NULL THEN b.failed_at
                WHEN {_ALL_ENDED} THEN c.last_finished
            END,
            updated_at = GREATEST(b.updated_at, c.at),
            last_seq = GREATEST(b.last_seq, c.seq)
        FROM (
            SELECT t.id, t.seq, t.at, n.*
            FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS t(id, seq, at)
            -- Per batch, through the index on the batch's jobs (jobs_batch_place_idx): a join
            -- the planner may turn into a scan of every job, in every transaction.
            CROSS JOIN LATERAL (
                SELECT
                    count(*) FILTER (WHERE j.latest AND j.status = 'pending') AS pending,
                    count(*) FILTER (WHERE j.latest AND j.status = 'running') AS running,
                    count(*) FILTER (WHERE j.latest AND j.status = 'completed') AS completed,
                    count(*) FILTER (WHERE j.latest AND j.status = 'failed') AS failed,
                    count(*) FILTER (WHERE j.latest AND j.status = 'cancelled') AS cancelled,
                    min(j.started_at) AS started_at,
                    max(j.finished_at) FILTER (WHERE j.latest) AS last_finished
                FROM {schema}.jobs AS j
                WHERE j.batch_id = t.id
            ) AS n
        ) AS c
        WHERE b.id = c.id
        """,
        ids,
        [touched.batches[i][0] for i in ids],
        [touched.batches[i][1] for i in ids],
    )
