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


async def upsert_batch(conn: asyncpg.Connection, schema: str, change: BatchChanged) -> None:
    """Write a batch event's fields, creating the row if no event made it yet."""
    cols = list(change.fields)
    values = ", ".join(f"${i}" for i in range(4, len(cols) + 4))
    sets = [f"{c} = EXCLUDED.{c}" for c in cols]
    if change.requested:
        # The BatchRequested is the batch's beginning, even when a later event made the row.
        sets += [
            "created_at = LEAST(b.created_at, EXCLUDED.created_at)",
            "first_seq = LEAST(b.first_seq, EXCLUDED.first_seq)",
        ]
    await conn.execute(
        f"INSERT INTO {schema}.batches AS b "
        f"(id, created_at, updated_at, first_seq, last_seq{''.join(', ' + c for c in cols)}) "
        f"VALUES ($1, $2, $2, $3, $3{', ' + values if cols else ''}) "
        f"ON CONFLICT (id) DO {'UPDATE SET ' + ', '.join(sets) if sets else 'NOTHING'}",
        change.batch_id,
        change.occurred_at,
        change.stream_seq,
        *change.fields.values(),
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
            SELECT t.id, t.seq, t.at,
                count(*) FILTER (WHERE j.latest AND j.status = 'pending') AS pending,
                count(*) FILTER (WHERE j.latest AND j.status = 'running') AS running,
                count(*) FILTER (WHERE j.latest AND j.status = 'completed') AS completed,
                count(*) FILTER (WHERE j.latest AND j.status = 'failed') AS failed,
                count(*) FILTER (WHERE j.latest AND j.status = 'cancelled') AS cancelled,
                min(j.started_at) AS started_at,
                max(j.finished_at) FILTER (WHERE j.latest) AS last_finished
            FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS t(id, seq, at)
            LEFT JOIN {schema}.jobs AS j ON j.batch_id = t.id
            GROUP BY t.id, t.seq, t.at
        ) AS c
        WHERE b.id = c.id
        """,
        ids,
        [touched.batches[i][0] for i in ids],
        [touched.batches[i][1] for i in ids],
    )
