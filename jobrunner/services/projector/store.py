"""Writes row changes and the checkpoint to Postgres, in one transaction per batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import asyncpg

from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.postgrescopy import copy_records
from jobrunner.services.projector import batchcounts
from jobrunner.services.projector.batchcounts import BatchWrite, Touched
from jobrunner.services.projector.projections import (
    WEBHOOK_COLUMNS,
    ArtifactRecorded,
    BatchChanged,
    Change,
    JobCreated,
    JobUpdated,
    LinesAppended,
    WebhookAttemptRecorded,
)

_TERMINAL = ("completed", "failed", "cancelled")
# Every write to the live read models holds this advisory lock shared; a replay takes it
# exclusively to swap its rebuilt schema in, so no batch straddles the swap.
SWAP_LOCK = 0x6A6F6272756E  # "jobrun"


async def create_schema(
    conn: asyncpg.Connection, schema: str = READ_SCHEMA, indexes: bool = True
) -> None:
    """The read-model tables; their secondary indexes too unless ``indexes`` is false (a bulk
    load builds them afterwards with ``create_indexes``)."""
    await _run_sql(conn, "schema.sql", schema)
    if indexes:
        await create_indexes(conn, schema)


async def create_indexes(
    conn: asyncpg.Connection, schema: str = READ_SCHEMA, search: bool = True
) -> None:
    """The secondary indexes; the search index too unless ``search`` is false."""
    await _run_sql(conn, "indexes.sql", schema)
    if search:
        await create_search_index(conn, schema)


async def create_search_index(conn: asyncpg.Connection, schema: str = READ_SCHEMA) -> None:
    await _run_sql(conn, "search_index.sql", schema)


async def _run_sql(conn: asyncpg.Connection, name: str, schema: str) -> None:
    sql = resources.files("jobrunner.services.projector").joinpath(name).read_text()
    async with conn.transaction():
        if schema == READ_SCHEMA:
            # Two projectors starting at once must not race on CREATE TABLE. (A replay's own
            # schema has one writer, which builds its indexes on two connections at once.)
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('jobrunner-schema'))")
        await conn.execute(sql.format(schema=schema))


class CheckpointBehind(Exception):
    """The stored checkpoint is behind what the projector had committed: Postgres lost
    acknowledged commits (a crash with ``synchronous_commit = off``, a restored backup)."""

    def __init__(self, stored: int, next_seq: int) -> None:
        super().__init__(f"stored checkpoint {stored}, the feed was at {next_seq}")
        self.stored = stored
        self.fields = {"stored_checkpoint": stored, "feed_at": next_seq}


async def checkpoint(conn: asyncpg.Connection, schema: str = READ_SCHEMA) -> int:
    return int(await conn.fetchval(f"SELECT last_seq FROM {schema}.checkpoint WHERE id = 1"))


async def lock_checkpoint(conn: asyncpg.Connection, schema: str, committed: int | None) -> int:
    """Inside a transaction that moves the checkpoint: the stored checkpoint, its row locked (a
    second projector waits). Raises ``CheckpointBehind`` when it is behind ``committed`` (what
    the caller had committed itself): Postgres lost acknowledged commits, and moving the
    checkpoint on would skip the lost events for good."""
    if schema == READ_SCHEMA:
        # Before touching any table: a replay may be renaming the schema under us.
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", SWAP_LOCK)
    last = int(
        await conn.fetchval(f"SELECT last_seq FROM {schema}.checkpoint WHERE id = 1 FOR UPDATE")
    )
    if committed is not None and last < committed:
        raise CheckpointBehind(last, committed + 1)
    return last


async def apply_batch(
    conn: asyncpg.Connection,
    batch: list[tuple[int, list[Change]]],
    schema: str = READ_SCHEMA,
    writing: Callable[[], None] | None = None,
    committed: int | None = None,
) -> int:
    """Apply ``(stream_seq, changes)`` pairs past the checkpoint; returns the new checkpoint.
    Raises ``CheckpointBehind`` (nothing written) when the stored checkpoint is behind
    ``committed``, the checkpoint the caller had committed itself.

    The checkpoint row is locked first, so a second projector waits and then skips what this one
    applied: redelivery never duplicates a row. ``writing`` is called as the batch's bulk writes
    start (its ``COPY``s, else its updates): from then on Postgres has work of its own, and the
    caller's other tasks may run without keeping it waiting (``EventFeed.hold``).
    """
    async with conn.transaction():
        last = await lock_checkpoint(conn, schema, committed)
        fresh = batch if batch[0][0] > last else [(s, c) for s, c in batch if s > last]
        if not fresh:
            return int(last)
        # Folded first as if every job created in the batch were new (the usual case): the fold
        # names them, which saves a pass over every change of the batch (a replay's largest
        # batches hold 10,000 events). Folded again in the rare batch where that was not so.
        plan = fold(fresh, set())
        if plan.created:
            existing: set[str] = set()
            late_roots: set[str] = set()
            # Also: new jobs that a stored attempt names as its first (an attempt stored before
            # the job it repeats): their attempts' ``latest`` is decided again below.
            for r in await conn.fetch(
                f"SELECT id, false AS root FROM {schema}.jobs WHERE id = ANY($1::text[]) "
                f"UNION ALL SELECT DISTINCT attempt_of, true FROM {schema}.jobs "
                "WHERE attempt_of = ANY($1::text[])",
                plan.created,
            ):
                (late_roots if r["root"] else existing).add(r["id"])
            if existing or late_roots:
                plan = fold(fresh, existing, late_roots)
        bulk = writing or _nothing
        # Jobs stored already were taken out above (under the checkpoint lock): none conflicts.
        for columns, rows in plan.inserts.items():
            bulk()
            await copy_records(conn, "jobs", schema_name=schema, columns=columns, records=rows)
        if plan.lines:
            await _flush_lines(conn, schema, plan.lines, plan.line_counts, bulk)
        bulk()
        if plan.webhook_attempts:
            await _insert_webhook_attempts(conn, schema, plan.webhook_attempts)
        # Updates of jobs created in earlier batches keep their order (each one's condition
        # reads the status the previous one left): consecutive ones of the same statement go
        # in one pipelined executemany. Line counts commute with them.
        statuses: dict[str, tuple[int, Any]] = {}  # job -> its last status change's seq, time
        for sql, run in _runs(plan.updates, schema):
            if len(run) == 1:
                await conn.execute(sql, *run[0])
            else:
                await conn.executemany(sql, run)
        for change in plan.updates:
            if isinstance(change, JobUpdated) and "status" in change.fields:
                statuses[change.job_id] = (change.stream_seq, change.fields["updated_at"])
        touched = plan.touched
        if statuses:
            # A status change of a job of a batch touches the batch (whether or not it changed
            # the status: the same rule in fold, so any cut of the stream touches the same).
            for r in await conn.fetch(
                f"SELECT id, batch_id FROM {schema}.jobs "
                "WHERE id = ANY($1::text[]) AND batch_id IS NOT NULL",
                list(statuses),
            ):
                touched.add(r["batch_id"], *statuses[r["id"]])
        if plan.batches:
            await batchcounts.upsert_batches(conn, schema, plan.batches)
        if plan.roots:
            await batchcounts.decide_latest(conn, schema, plan.roots)
        if touched:
            await batchcounts.recount(conn, schema, touched)
        if plan.artifacts:
            await _record_artifacts(conn, schema, plan.artifacts)
        new_last = fresh[-1][0]
        await conn.execute(f"UPDATE {schema}.checkpoint SET last_seq = $1 WHERE id = 1", new_last)
        return new_last


@dataclass
class Plan:
    """A batch's writes, few statements: jobs created in the batch are inserted with every later
    change of the batch already applied to their row."""

    inserts: dict[tuple[str, ...], list[tuple[Any, ...]]] = field(default_factory=dict)
    updates: list[Change] = field(default_factory=list)
    lines: list[tuple[Any, ...]] = field(default_factory=list)
    line_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    webhook_attempts: list[tuple[Any, ...]] = field(default_factory=list)
    # Batches whose counters the batch changes (by jobs created in it and their status changes);
    # the updates add theirs when applied.
    touched: Touched = field(default_factory=Touched)
    # First attempts whose attempts' ``latest`` must be decided again.
    roots: set[str] = field(default_factory=set)
    # The batch events, merged per batch (one statement for many instead of one each).
    batches: dict[str, BatchWrite] = field(default_factory=dict)
    # Every job a JobCreated of the batch names (stored already or not), in stream order.
    created: list[str] = field(default_factory=list)
    # The artifacts' rows, in stream order.
    artifacts: list[dict[str, Any]] = field(default_factory=list)


def fold(
    batch: list[tuple[int, list[Change]]],
    existing: set[str],
    late_roots: frozenset[str] | set[str] = frozenset(),
) -> Plan:
    """Plan a batch; ``existing`` are created jobs whose row is already stored (a redelivered
    JobRequested): those keep the statement-by-statement path, like every older job.
    ``late_roots``: created jobs of which an attempt is stored already."""
    plan = Plan()
    created: dict[str, dict[str, Any]] = {}
    # Looked up once: the lines' branch runs for 600,000 events of a replay's million.
    lines = plan.lines
    created_row = created.get
    for seq, changes in batch:
        for change in changes:
            # The most frequent kinds first: lines, then job updates (the kinds are disjoint).
            if isinstance(change, LinesAppended):
                rows = change.rows
                lines += rows
                row = created_row(change.job_id)
                if row is not None:
                    row["log_count"] += len(rows)
                    if seq > row["last_seq"]:
                        row["last_seq"] = seq
                else:
                    count, _ = plan.line_counts.get(change.job_id, (0, 0))
                    plan.line_counts[change.job_id] = (count + len(rows), seq)
            elif isinstance(change, JobUpdated):
                row = created_row(change.job_id)
                if row is None:
                    plan.updates.append(change)
                else:
                    if "status" in change.fields and row["batch_id"] is not None:
                        plan.touched.add(
                            row["batch_id"], change.stream_seq, change.fields["updated_at"]
                        )
                    # The condition ``_statement`` puts in its WHERE clause, on the row in
                    # memory (inline: a replay folds 300,000 of these a million events).
                    status = row["status"]
                    only_if_status = change.only_if_status
                    if (
                        status in only_if_status
                        if only_if_status is not None
                        else not change.only_if_active or status not in _TERMINAL
                    ):
                        row.update(change.fields)
                        if change.stream_seq > row["last_seq"]:
                            row["last_seq"] = change.stream_seq
            elif isinstance(change, JobCreated):
                job_id = change.row["id"]
                plan.created.append(job_id)
                if job_id in existing:
                    plan.updates.append(change)
                elif job_id not in created:  # a second JobRequested changes nothing
                    # A copy (a second fold of the batch must see the row as projected), made
                    # by ``dict``: it clones the row's table at once, where the literal
                    # ``{"log_count": 0, **row}`` inserts the columns one by one.
                    new = created[job_id] = dict(change.row)
                    new["log_count"] = 0
                    if new["batch_id"] is not None:
                        plan.touched.add(new["batch_id"], seq, new["created_at"])
                    if new["attempt_of"] is not None:
                        plan.roots.add(new["attempt_of"])
                    if job_id in late_roots:
                        plan.roots.add(job_id)
            elif isinstance(change, BatchChanged):
                batchcounts.merge(plan.batches, change)
                plan.touched.add(change.batch_id, change.stream_seq, change.occurred_at)
            elif isinstance(change, WebhookAttemptRecorded):
                plan.webhook_attempts.append(change.row)
            elif isinstance(change, ArtifactRecorded):
                plan.artifacts.append(change.row)
    for row in created.values():
        plan.inserts.setdefault(tuple(row), []).append(tuple(row.values()))
    return plan


# In the order of a line's row (projections.LineRow): the line's own fields first, as its event
# lays them out, so a row is built without a Python step per line.
LINE_COLUMNS = ("seq", "stream", "level", "ts", "text", "job_id", "stream_seq")
_LINE_JOB_ID = LINE_COLUMNS.index("job_id")


def _nothing() -> None:
    pass


async def _copy_lines(
    conn: asyncpg.Connection, schema: str, rows: list[tuple[Any, ...]], writing: Callable[[], None]
) -> bool:
    """COPY the lines in, the fastest way into Postgres; False (and nothing written) when one of
    them is there already: the caller then inserts them with a statement that skips those. Only a
    stream holding the same line twice gets there (say, re-published after the de-duplication
    window)."""
    try:
        async with conn.transaction():  # a savepoint: a failed COPY leaves the batch intact
            writing()
            await copy_records(
                conn, "log_lines", schema_name=schema, columns=LINE_COLUMNS, records=rows
            )
    except asyncpg.UniqueViolationError:
        return False
    return True


async def _flush_lines(
    conn: asyncpg.Connection,
    schema: str,
    rows: list[tuple[Any, ...]],
    counts: dict[str, tuple[int, int]],
    writing: Callable[[], None],
) -> None:
    copied = await _copy_lines(conn, schema, rows, writing)
    if not copied:
        await _insert_lines(conn, schema, rows)
    await conn.executemany(
        f"UPDATE {schema}.jobs SET log_count = log_count + $2, last_seq = GREATEST(last_seq, $3) "
        "WHERE id = $1",
        [(job_id, n, seq) for job_id, (n, seq) in counts.items()],
    )
    if not copied:
        # Some lines were there already: the counts above took them twice. Count again.
        await conn.execute(
            f"UPDATE {schema}.jobs AS j SET log_count = "
            f"(SELECT count(*) FROM {schema}.log_lines AS l WHERE l.job_id = j.id) "
            "WHERE j.id = ANY($1::text[])",
            list({row[_LINE_JOB_ID] for row in rows}),
        )


async def _insert_lines(conn: asyncpg.Connection, schema: str, rows: list[tuple[Any, ...]]) -> None:
    columns = list(zip(*rows, strict=True))
    await conn.execute(
        f"""
        INSERT INTO {schema}.log_lines ({", ".join(LINE_COLUMNS)})
        SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::timestamptz[],
                             $5::text[], $6::text[], $7::bigint[])
        ON CONFLICT DO NOTHING
        """,
        *columns,
    )


async def _insert_webhook_attempts(
    conn: asyncpg.Connection, schema: str, rows: list[tuple[Any, ...]]
) -> None:
    """An attempt stored already (its event published twice by two notifiers after a hand-over,
    past the de-duplication window) keeps its first row."""
    placeholders = ", ".join(f"${i}" for i in range(1, len(WEBHOOK_COLUMNS) + 1))
    await conn.executemany(
        f"INSERT INTO {schema}.webhook_deliveries ({', '.join(WEBHOOK_COLUMNS)}) "
        f"VALUES ({placeholders}) ON CONFLICT DO NOTHING",
        rows,
    )


ARTIFACT_COLUMNS = (
    "job_id",
    "name",
    "size",
    "content_type",
    "sha256",
    "object_name",
    "stored_at",
    "stream_seq",
)


async def _record_artifacts(
    conn: asyncpg.Connection, schema: str, rows: list[dict[str, Any]]
) -> None:
    """In stream order: a later announcement of the same job and name wins, as in a replay."""
    columns = ", ".join(ARTIFACT_COLUMNS)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in ARTIFACT_COLUMNS[2:])
    await conn.executemany(
        f"INSERT INTO {schema}.artifacts ({columns}) "
        f"VALUES ({', '.join(f'${i}' for i in range(1, len(ARTIFACT_COLUMNS) + 1))}) "
        f"ON CONFLICT (job_id, name) DO UPDATE SET {updates}",
        [tuple(row[c] for c in ARTIFACT_COLUMNS) for row in rows],
    )


def _runs(changes: list[Change], schema: str) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The changes as statements with their arguments, consecutive ones of the same statement
    together (their order kept)."""
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []
    for change in changes:
        sql, args = _statement(change, schema)
        if runs and runs[-1][0] == sql:
            runs[-1][1].append(args)
        else:
            runs.append((sql, [args]))
    return runs


def _statement(change: Change, schema: str) -> tuple[str, tuple[Any, ...]]:
    if isinstance(change, JobCreated):
        # Only a job stored already comes here (see fold): nothing is inserted, nothing counted.
        row = change.row
        cols = list(row)
        return (
            f"INSERT INTO {schema}.jobs ({', '.join(cols)}) "
            f"VALUES ({', '.join(f'${i}' for i in range(1, len(cols) + 1))}) "
            "ON CONFLICT (id) DO NOTHING",
            tuple(row.values()),
        )
    assert isinstance(change, JobUpdated)
    cols = list(change.fields)
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, start=3))
    where = "id = $1"
    if change.only_if_status is not None:
        where += f" AND status = ANY(ARRAY{sorted(change.only_if_status)!r}::text[])"
    elif change.only_if_active:
        where += f" AND status NOT IN {_TERMINAL!r}"
    return (
        f"UPDATE {schema}.jobs SET {sets}, last_seq = GREATEST(last_seq, $2) WHERE {where}",
        (change.job_id, change.stream_seq, *change.fields.values()),
    )


async def prune(conn: asyncpg.Connection, cutoff: Any, schema: str = READ_SCHEMA) -> int:
    """Read-model retention: delete jobs and batches that finished before ``cutoff``, with the
    jobs' lines, webhook attempts and the rows of their artifacts.

    Only the read models shrink; the events stay in the stream for as long as its own limits
    keep them, and a replay applies the same cutoff before comparing.
    """
    async with conn.transaction():
        if schema == READ_SCHEMA:
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", SWAP_LOCK)
        # A batch goes once it ended before the cutoff, and with it its jobs; a job of a batch
        # that is still kept stays, or the batch's counters would be counted without it.
        await conn.execute(f"DELETE FROM {schema}.batches WHERE finished_at < $1", cutoff)
        ids = await conn.fetch(
            f"DELETE FROM {schema}.jobs AS j WHERE finished_at < $1 AND (batch_id IS NULL "
            f"OR NOT EXISTS (SELECT 1 FROM {schema}.batches AS b WHERE b.id = j.batch_id)) "
            "RETURNING id",
            cutoff,
        )
        if ids:
            for table in ("log_lines", "webhook_deliveries", "artifacts"):
                await conn.execute(
                    f"DELETE FROM {schema}.{table} WHERE job_id = ANY($1::text[])",
                    [r["id"] for r in ids],
                )
        return len(ids)
