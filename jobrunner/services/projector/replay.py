"""``jobrunner replay``: rebuild every read model from stream sequence 1 and swap it in.

1. Project the whole stream into a fresh schema (``readmodel_replay``) while the live projector
   and the API carry on with ``readmodel``.
2. Catch up with the live projector's checkpoint.
3. In one transaction: take the swap lock exclusively (the live projector holds it shared for each
   batch, so it pauses between two batches), project the last events up to exactly the live
   checkpoint, compare the rebuilt tables with the live ones row by row, then rename
   ``readmodel`` to ``readmodel_previous`` and ``readmodel_replay`` to ``readmodel``.
4. After the commit the live projector goes on in the rebuilt schema from the same checkpoint
   (Postgres re-plans its statements after the rename), and the API reads the rebuilt tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from nats.js import JetStreamContext

from jobrunner.common import database, eventstore, postgresconnect, postgreswatch, readmodelversion
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.projector import setaside, store, workpool
from jobrunner.services.projector.feed import EventFeed
from jobrunner.services.projector.projections import Change
from jobrunner.services.projector.replaylock import (
    REPLAY_LOCK,
    ReplayLockLost,
    ReplayRunning,
    SwapState,
    connect_lock_holder,
    rebuilt_schema_transaction,
    swap_transaction,
)

log = structlog.get_logger()

REPLAY_SCHEMA = f"{READ_SCHEMA}_replay"
PREVIOUS_SCHEMA = f"{READ_SCHEMA}_previous"
# What a swap that committed but could not drop the replaced read models left: a warning.
PREVIOUS_LEFT = f"{PREVIOUS_SCHEMA} left; the next replay or rebuild drops it"
RESTART_ATTEMPTS = 10  # consecutive failed restarts of the feed before the replay gives up
LIVE_PROJECTOR_TIMEOUT = 30.0
# At most this many events are left for the swap transaction (the live projector waits on it).
SWAP_SLACK = 2000
# The loaded tables get statistics once this many events are in, and again each time that
# doubles (see _load).
FIRST_ANALYZE = 10_000
# How long the loading waits for events when the feed has none ready (jobs keep arriving on a
# live system; a stream read to its end is found out without this wait, see _load).
LOAD_FETCH_WAIT = 0.5
# Tables compared after a replay, each with the columns that identify a row in a report.
COMPARED_TABLES = {
    "jobs": "id",
    "log_lines": "job_id, seq",
    "webhook_deliveries": "job_id, delivery_id, attempt",
    "batches": "id",
    "artifacts": "job_id, name",
    "checkpoint": "id",
    # The same events set aside, for the same reason (when they were is not compared).
    "projector_failures": "stream_seq",
}
NOT_COMPARED = {"recorded_at"}


def _columns_note(first: tuple[str, list[str]] | None) -> str:
    if first is None:
        return ""
    key, columns = first
    return f" ({key} differs in {', '.join(columns)})"


class ReplayMismatch(Exception):
    """The rebuilt tables differ from the live ones; nothing was swapped."""

    def __init__(
        self,
        differences: dict[str, list[str]],
        differing_columns: dict[str, tuple[str, list[str]]] | None = None,
    ) -> None:
        self.differences = differences
        # Per table, the first differing key and the columns whose values differ in its row
        # (what to look at first: a time, a count, a status).
        self.differing_columns = differing_columns or {}
        lines = [
            f"{table}: {', '.join(keys)}{_columns_note(self.differing_columns.get(table))}"
            for table, keys in differences.items()
        ]
        super().__init__(
            f"the rebuilt read models differ from the live ones ({'; '.join(lines)}); "
            f"nothing was swapped, the rebuilt tables are in schema {REPLAY_SCHEMA}"
        )


@dataclass
class Progress:
    done: int  # events applied
    target: int  # the stream's last sequence when measured
    first_seq: int
    started: float = field(default_factory=time.monotonic)
    # "loading" the events; then "indexing", "comparing" (the live projector pauses) and done.
    phase: str = "loading"

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def seconds_left(self) -> float | None:
        left = max(self.target - self.first_seq + 1 - self.done, 0)
        return left / self.rate if self.rate > 0 else None


@dataclass
class ReplayReport:
    events: int
    seconds: float
    checkpoint: int
    first_seq: int
    tables: dict[str, int]  # rows per rebuilt table
    differences: dict[str, list[str]]
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent in each phase
    # Per differing table: its first differing key and the columns that differ in that row.
    differing_columns: dict[str, tuple[str, list[str]]] = field(default_factory=dict)
    # Why the replaced read models' schema (PREVIOUS_SCHEMA) could not be dropped after the
    # swap (Postgres went away then), None when it was or was kept on purpose.
    previous_left: str | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def replay(
    settings: Settings,
    on_progress: Callable[[Progress], None] | None = None,
    keep_previous: bool = False,
    accept_differences: bool = False,
    progress_interval: float = 1.0,
) -> ReplayReport:
    """Rebuild the read models from the stream and swap them in; see the module docstring.

    Postgres frozen for ``replay_postgres_answer_seconds`` while the replay runs, or
    ending its connections (restarted, its backends terminated), raises ``PostgresUnusable``
    (``POSTGRES_UNAVAILABLE``): the swap is one transaction, so the live read models are
    either swapped whole or untouched, and a replay run again starts afresh. Its sentence says
    which, or that the swap's COMMIT went unanswered (``went_away_consequence``). A statement
    cancelled in Postgres (pg_cancel_backend) raises ``StatementCancelled``, nothing swapped."""
    watch = postgreswatch.WorkWatch(settings.database_url, settings.replay_postgres_answer_seconds)
    swap = SwapState()
    try:
        return await _replay(
            settings, on_progress, keep_previous, accept_differences, progress_interval, watch, swap
        )
    except Exception as exc:
        # A lost replay lock has a sentence of its own, unless the probe finds Postgres gone.
        in_chain = not isinstance(exc, ReplayLockLost)
        gone = await watch.why_failed(exc, in_chain=in_chain)
        if gone is not None:
            raise postgresconnect.went_away(
                gone, settings.database_url, "the replay", went_away_consequence(swap)
            ) from exc
        cancel = postgresconnect.cancelled_error(exc) if in_chain else None
        if cancel is None:
            raise
        # Postgres answered the cancelled statement: the swap, one transaction, is whole or
        # not begun (a COMMIT cancelled is answered, rolled back).
        raise postgresconnect.statement_cancelled(
            cancel,
            settings.database_url,
            "the replay",
            swap.consequence(PREVIOUS_SCHEMA, "the next replay", "run `jobrunner replay` again"),
        ) from exc
    finally:
        await watch.stop()


def went_away_consequence(swap: SwapState) -> str:
    """What a replay that met Postgres gone left of the live read models, and what to do."""
    if swap.committed or swap.committing:
        return swap.consequence(
            PREVIOUS_SCHEMA,
            "the next replay",
            "run `jobrunner replay` again once Postgres answers (it rebuilds and compares again "
            "either way)",
        )
    return postgresconnect.NOTHING_SWAPPED


async def _replay(
    settings: Settings,
    on_progress: Callable[[Progress], None] | None,
    keep_previous: bool,
    accept_differences: bool,
    progress_interval: float,
    watch: postgreswatch.WorkWatch,
    swap: SwapState,
) -> ReplayReport:
    names = Names(settings.prefix)
    started = time.monotonic()
    phases: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as resources:
        nc = await eventstore.connect(settings, "replay")
        resources.push_async_callback(eventstore.close, nc)
        js = nc.jetstream()
        # Three index builds at once (build_indexes).
        pool = await workpool.open_work_pool(settings.database_url, size=3)
        resources.push_async_callback(database.close_pool, pool)
        lock_holder = await connect_lock_holder(
            settings.database_url, settings.projector_postgres_dead_seconds
        )
        resources.push_async_callback(database.close_connection, lock_holder)

        def end_connections() -> None:
            # Every statement waiting on a frozen Postgres ends at once (its connection
            # closed), the swap's transaction included: it is never committed.
            pool.terminate()
            lock_holder.terminate()

        # Stopped by ``replay`` once it has asked the watch why the replay failed.
        await watch.start(on_gone=end_connections)
        if not await lock_holder.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK):
            raise ReplayRunning()
        await eventstore.ensure_topology(js, names, settings)
        info = await js.stream_info(names.stream)
        first_seq = max(info.state.first_seq, 1)
        async with pool.acquire() as conn:
            await store.create_schema(conn)  # the live one, should this be a fresh install
            await _fresh_schema(conn, line_key=False, lock_holder_pid=lock_holder.get_server_pid())
        progress = Progress(0, info.state.last_seq, first_seq)

        def begin(phase: str) -> float:
            progress.phase = phase
            if on_progress:
                on_progress(progress)
            return time.monotonic()

        async def load() -> tuple[EventFeed, int, Batch]:
            progress.phase = "loading"
            feed = EventFeed(js, names, settings, name="replay", restart_attempts=RESTART_ATTEMPTS)
            resources.push_async_callback(feed.close)
            await feed.start(first_seq)
            with collector_paused():
                applied, held = await _load(
                    pool, js, names, feed, progress, on_progress, progress_interval
                )
            phases["loading"] = time.monotonic() - progress.started
            return feed, applied, held

        feed, applied, held = await load()
        mark = begin("indexing")
        # The lines' primary key is built once after the load (Postgres' CPU 12 % less, 0.7 s
        # per million events, than keeping it up to date line by line). Without it a line
        # stored twice in the stream is copied twice: building the key then fails, and the
        # replay loads again with the key in place, which keeps the first of the two as the
        # live projector did.
        if not await build_indexes(pool, REPLAY_SCHEMA, line_key=True):
            log.warning("replay loads again with the lines' key: a line is stored twice")
            await feed.close()
            async with pool.acquire() as conn:
                await _fresh_schema(
                    conn, line_key=True, lock_holder_pid=lock_holder.get_server_pid()
                )
            progress.done = 0
            feed, applied, held = await load()
            mark = begin("indexing")
            await build_indexes(pool, REPLAY_SCHEMA)
        phases["indexing"] = time.monotonic() - mark
        mark = begin("comparing")
        # Swap phase: the live projector pauses between two batches while we finish. On the
        # lock's own session: the lock is still ours when it commits (replaylock.py).
        async with swap_transaction(lock_holder, swap) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", store.SWAP_LOCK)
            live = await store.checkpoint(conn)
            while applied < live:
                batch = held or await feed.fetch(timeout=5.0)
                held = []
                if not batch:
                    raise RuntimeError(f"the stream ended at {applied}, before the live {live}")
                upto = [(seq, changes) for seq, changes in batch if seq <= live]
                if not upto:
                    # Sequences only grow: what lies between will never come. Waiting would hold
                    # the swap lock (and so the live projector) for as long as jobs arrive.
                    raise RuntimeError(
                        f"the stream went on at {batch[0][0]} without the events from "
                        f"{applied + 1} to the live checkpoint {live}; were they deleted?"
                    )
                applied = await setaside.apply(conn, upto, feed.lookup, REPLAY_SCHEMA)
                progress.done += len(upto)
            await feed.close()
            if settings.readmodel_retention_days > 0:
                cutoff = datetime.now(UTC) - timedelta(days=settings.readmodel_retention_days)
                await store.prune(conn, cutoff, REPLAY_SCHEMA)
                await store.prune(conn, cutoff, READ_SCHEMA)
            async with pool.acquire() as other:
                # The live tables are read on a second connection, in parallel, unless this
                # transaction changed them (the retention cut above): then only it sees them.
                live_reader = conn if settings.readmodel_retention_days > 0 else other
                differences, tables, differing_columns = await compare(
                    conn, live_reader, READ_SCHEMA, REPLAY_SCHEMA
                )
            if differences and not accept_differences:
                raise ReplayMismatch(differences, differing_columns)
            await conn.execute(f"DROP SCHEMA IF EXISTS {PREVIOUS_SCHEMA} CASCADE")
            await conn.execute(f"ALTER SCHEMA {READ_SCHEMA} RENAME TO {PREVIOUS_SCHEMA}")
            await conn.execute(f"ALTER SCHEMA {REPLAY_SCHEMA} RENAME TO {READ_SCHEMA}")
        phases["comparing"] = time.monotonic() - mark
        log.info("replay swapped in", checkpoint=applied, events=progress.done)
        previous_left = None
        if not keep_previous:
            previous_left = await drop_previous(pool)
        return ReplayReport(
            events=progress.done,
            seconds=time.monotonic() - started,
            checkpoint=applied,
            first_seq=first_seq,
            tables=tables,
            differences=differences,
            differing_columns=differing_columns,
            phases={name: round(seconds, 3) for name, seconds in phases.items()},
            previous_left=previous_left,
        )


async def drop_previous(pool: asyncpg.Pool) -> str | None:
    """Drop the read models the swap replaced; None once dropped, else why not. The swap has
    committed, so the replay (or rebuild) has succeeded whatever happens here: Postgres frozen,
    restarted or stopped now, or its backends terminated, leaves the schema for the next
    replay, which drops it before its own swap, and is a warning, not the command's failure."""
    try:
        # After the commit: queries still reading the old tables finish first.
        async with pool.acquire() as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {PREVIOUS_SCHEMA} CASCADE")
    except Exception as exc:  # the swap is done: any failure here leaves only the schema
        # Said once, by the caller (PREVIOUS_LEFT): `jobrunner replay`'s sentence, the
        # projector's log line.
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


async def _fresh_schema(conn: asyncpg.Connection, line_key: bool, lock_holder_pid: int) -> None:
    """An empty ``REPLAY_SCHEMA`` for the bulk load: no secondary index, autovacuum off, and
    unless ``line_key`` no primary key on the lines (``build_indexes`` adds it). Only while the
    backend ``lock_holder_pid`` holds the replay lock (``rebuilt_schema_transaction``: a replay
    that lost it must not drop what another replay's swap just made the live schema)."""
    async with rebuilt_schema_transaction(conn, lock_holder_pid):
        await conn.execute(f"DROP SCHEMA IF EXISTS {REPLAY_SCHEMA} CASCADE")
        await store.create_schema(conn, REPLAY_SCHEMA, indexes=False)
        if not line_key:
            await conn.execute(f"ALTER TABLE {REPLAY_SCHEMA}.log_lines DROP CONSTRAINT {LINE_KEY}")
        # The version goes with the rebuilt schema when it takes the live one's name.
        await readmodelversion.record(conn, REPLAY_SCHEMA, by="jobrunner replay")
        # Autovacuum would chase the bulk load (a million new rows set it off) for the second
        # core; the tables get their statistics once loaded (build_indexes).
        await set_autovacuum(conn, REPLAY_SCHEMA, enabled=False)


LINE_KEY = "log_lines_pkey"  # the name Postgres gives the primary key of schema.sql


async def build_indexes(pool: asyncpg.Pool, schema: str, line_key: bool = False) -> bool:
    """Indexes built once over the loaded tables of ``schema``, autovacuum back on, and
    statistics for the planner: the rebuilt tables serve queries as well as the live ones from
    the first request. Shared with the upgrade's rebuild.

    Three builds run at once on three connections of ``pool`` (the lines' key, the trigram
    search indexes, the others), none waiting for a lock another holds (each ``CREATE INDEX``
    shares its table): the trigram (GIN) index is built by one process, while Postgres may give
    a btree build parallel workers (``max_parallel_maintenance_workers``). Each table's
    statistics and autovacuum, which wait for the builds of that table, come as soon as those
    are done: the jobs' ``ANALYZE`` (a third of a second a million events, one core) runs
    beside the lines' key, the longest build, instead of after it on an otherwise idle machine.

    With ``line_key`` the lines' primary key too: False when two lines have the same key (the
    other builds are cancelled: their tables are about to be dropped). Any other failure is
    raised as itself, the other builds cancelled."""

    async def lines() -> None:
        async with pool.acquire() as conn:
            if line_key:
                # The unique index first, then the key takes it: the index is built sharing the
                # table, the key alone would lock it.
                try:
                    await conn.execute(
                        f"CREATE UNIQUE INDEX {LINE_KEY} ON {schema}.log_lines (job_id, seq)"
                    )
                except asyncpg.UniqueViolationError as exc:
                    raise _LineStoredTwice from exc
                await conn.execute(
                    f"ALTER TABLE {schema}.log_lines ADD CONSTRAINT {LINE_KEY} "
                    f"PRIMARY KEY USING INDEX {LINE_KEY}"
                )
            await conn.execute(f"ANALYZE {schema}.log_lines")
            await set_autovacuum(conn, schema, enabled=True, tables=("log_lines",))

    async def search_index() -> None:
        async with pool.acquire() as conn:
            await store.create_search_index(conn, schema)

    async def other_indexes() -> None:
        async with pool.acquire() as conn:
            await store.create_indexes(conn, schema, search=False)

    async def jobs_and_batches() -> None:
        async with asyncio.TaskGroup() as builds:
            builds.create_task(search_index())
            builds.create_task(other_indexes())
        async with pool.acquire() as conn:
            # After the search indexes: the statistics of their expressions are gathered with
            # the tables'.
            await conn.execute(f"ANALYZE {schema}.jobs")
            await conn.execute(f"ANALYZE {schema}.batches")
            await set_autovacuum(conn, schema, enabled=True, tables=("jobs", "batches"))

    errors: list[BaseException] | None = None
    try:
        # The first failure cancels the other builds.
        async with asyncio.TaskGroup() as builds:
            builds.create_task(lines())
            builds.create_task(jobs_and_batches())
    except ExceptionGroup as group:
        errors = [e for e in _leaves(group) if not isinstance(e, _LineStoredTwice)]
    if errors is None:
        return True
    if errors:
        # The error itself, as a single build would raise it, not the group (nor the group of
        # the jobs' and batches' builds inside it); raised outside the handler, so that its
        # own chain (what it was raised from or while handling) is what it carries.
        raise errors[0]
    return False


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    """The exceptions of ``group`` and of the groups inside it, in order."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


class _LineStoredTwice(Exception):
    """The lines' key cannot be built: two lines have the same key."""


async def analyze(conn: asyncpg.Connection, schema: str) -> None:
    """Statistics of the tables a batch looks rows up in (by key): jobs and batches, during a
    bulk load. Only the columns those look-ups name: the tables' sizes, which the planner
    needs, come with any ANALYZE, and the other columns' statistics (the JSON ones are sorted
    with ``jsonb_cmp``) cost Postgres most of it: about 0.7 CPU-s per million events over a
    replay's analyzes, awaited with the load. ``build_indexes`` analyzes the whole tables."""
    await conn.execute(f"ANALYZE {schema}.jobs (id, attempt_of, batch_id), {schema}.batches (id)")


BULK_TABLES = ("jobs", "log_lines", "batches")


async def set_autovacuum(
    conn: asyncpg.Connection, schema: str, enabled: bool, tables: tuple[str, ...] = BULK_TABLES
) -> None:
    """Autovacuum off for a bulk load into ``schema``'s big tables (a million new rows set it
    off, and it would chase the load for the second core), or back to the server's setting."""
    change = "RESET (autovacuum_enabled)" if enabled else "SET (autovacuum_enabled = off)"
    for table in tables:
        await conn.execute(f"ALTER TABLE {schema}.{table} {change}")


Batch = list[tuple[int, list[Change]]]


async def _load(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    names: Names,
    feed: EventFeed,
    progress: Progress,
    on_progress: Callable[[Progress], None] | None,
    progress_interval: float,
) -> tuple[int, Batch]:
    """The bulk phase: follow the stream into the fresh schema, never getting ahead of the live
    projector (the two are compared at one checkpoint), while it and the API carry on.

    Returns the last sequence applied and what was fetched beyond the live checkpoint.
    """
    applied = live = 0
    held: Batch = []  # fetched, but past the live checkpoint
    last_report = 0.0
    next_analyze = FIRST_ANALYZE
    stalled_since: float | None = None
    while True:
        fetched = False
        if not held and progress.done and applied >= progress.target:
            # Everything the stream held when last asked is in: a fetch would only find out by
            # waiting out its timeout (half a second of every replay). What arrived since, up
            # to the swap's slack, the swap applies.
            progress.target = (await js.stream_info(names.stream)).state.last_seq
            if progress.target - applied <= SWAP_SLACK:
                return applied, held
        if not held:
            held = await feed.fetch(timeout=LOAD_FETCH_WAIT)
            fetched = bool(held)
        if not held or held[-1][0] > live:  # the live checkpoint only moves forward
            async with pool.acquire() as conn:
                live = await store.checkpoint(conn)
        if held and held[-1][0] <= live:
            upto, held = held, []
        else:
            upto = [(seq, changes) for seq, changes in held if seq <= live]
            held = held[len(upto) :]
        if upto:
            stalled_since = None
            async with pool.acquire() as conn:
                applied = await setaside.apply(conn, upto, feed.lookup, REPLAY_SCHEMA)
                if progress.done + len(upto) >= next_analyze:
                    # Autovacuum is off for the load, and a table never analyzed looks tiny
                    # to the planner: each batch's look-up of the jobs it creates (by key, in
                    # apply_batch) then scanned every job loaded so far, 50-110 ms a batch by
                    # 80,000 jobs. The planner scales what it learns here with the table's size.
                    await analyze(conn, REPLAY_SCHEMA)
                    next_analyze *= 2
            progress.done += len(upto)
            if on_progress and time.monotonic() - last_report >= progress_interval:
                last_report = time.monotonic()
                progress.target = (await js.stream_info(names.stream)).state.last_seq
                on_progress(progress)
            continue
        if not held and not fetched and applied >= live:
            return applied, held  # caught up with the stream and with the live projector
        if applied >= progress.target:
            # Jobs keep arriving: swap once the rest is small enough to finish in the swap.
            progress.target = (await js.stream_info(names.stream)).state.last_seq
            if progress.target - applied <= SWAP_SLACK:
                return applied, held
        if held:
            # Ahead of the live projector: wait for it (it must be running).
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > LIVE_PROJECTOR_TIMEOUT:
                raise RuntimeError(
                    f"the live projector has not passed stream sequence {live} for "
                    f"{LIVE_PROJECTOR_TIMEOUT:.0f} s; is it running?"
                )
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cycle collector off while loading: each pass would walk every object of the
    batches in flight (hundreds of thousands, none of them in a cycle), which took a third of
    the replay's time. What cycles the loading leaves are collected at the end."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def compare(
    rebuilt_conn: asyncpg.Connection, live_conn: asyncpg.Connection, live: str, rebuilt: str
) -> tuple[dict[str, list[str]], dict[str, int], dict[str, tuple[str, list[str]]]]:
    """Compare every read-model table of the two schemas; returns up to five differing keys per
    table, the rows of each rebuilt table, and per differing table its first differing key with
    the columns whose values differ in that key's row (none when the row is on one side only).

    A fingerprint first (the row count and the sum of a 64-bit hash of every row; for both
    schemas at once when ``live_conn`` is another connection); only tables whose fingerprints
    differ are compared row by row to name the differences. ``rebuilt_conn`` must be the
    connection that wrote the rebuilt schema (its last rows are not committed yet).
    """
    differences: dict[str, list[str]] = {}
    tables: dict[str, int] = {}
    differing_columns: dict[str, tuple[str, list[str]]] = {}
    # Every table's columns in one query: information_schema is slow to ask (7-25 ms a query),
    # and the live projector waits on the comparison.
    compared_columns = {
        row["table_name"]: row["columns"]
        for row in await rebuilt_conn.fetch(
            "SELECT table_name, "
            "string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) AS columns "
            "FROM information_schema.columns WHERE table_schema = $1 "
            "AND table_name = ANY($2::text[]) AND column_name <> ALL($3::text[]) "
            "GROUP BY table_name",
            rebuilt,
            list(COMPARED_TABLES),
            sorted(NOT_COMPARED),
        )
    }
    for table, key in COMPARED_TABLES.items():
        columns = compared_columns[table]
        fingerprint = (
            # The hash of each column's own type, not of the row as text: twice as fast.
            f"SELECT count(*), coalesce(sum(hash_record_extended(ROW({columns}), 0)), 0) "
            "FROM {schema}." + table
        )
        if live_conn is rebuilt_conn:  # one connection runs one query at a time
            rows, rebuilt_sum = await rebuilt_conn.fetchrow(fingerprint.format(schema=rebuilt))
            live_rows, live_sum = await live_conn.fetchrow(fingerprint.format(schema=live))
        else:
            (rows, rebuilt_sum), (live_rows, live_sum) = await asyncio.gather(
                rebuilt_conn.fetchrow(fingerprint.format(schema=rebuilt)),
                live_conn.fetchrow(fingerprint.format(schema=live)),
            )
        tables[table] = int(rows)
        if (rows, rebuilt_sum) == (live_rows, live_sum):
            continue
        found = await rebuilt_conn.fetch(
            f"""
            (SELECT 'only live' AS side, {key} FROM (
                SELECT {columns} FROM {live}.{table} EXCEPT ALL
                SELECT {columns} FROM {rebuilt}.{table}) AS a LIMIT 5)
            UNION ALL
            (SELECT 'only rebuilt', {key} FROM (
                SELECT {columns} FROM {rebuilt}.{table} EXCEPT ALL
                SELECT {columns} FROM {live}.{table}) AS b LIMIT 5)
            """
        )
        differences[table] = [
            f"{r['side']} {'/'.join(str(v) for v in list(r.values())[1:])}" for r in found
        ] or [f"{live_rows} live rows, {rows} rebuilt rows"]
        if found:
            first_key = list(found[0].values())[1:]
            differing = await _differing_columns(
                rebuilt_conn, table, key, columns, live, rebuilt, first_key
            )
            if differing:
                differing_columns[table] = ("/".join(str(v) for v in first_key), differing)
    return differences, tables, differing_columns


async def _differing_columns(
    conn: asyncpg.Connection,
    table: str,
    key: str,
    columns: str,
    live: str,
    rebuilt: str,
    key_values: list[object],
) -> list[str]:
    """The columns whose values differ between the live and the rebuilt row of one key, in the
    table's order; none unless each side holds exactly one row of that key. Asked only of a
    table that differs: one query, off the replay's loading."""
    key_columns = [name.strip() for name in key.split(",")]
    where = " AND ".join(f"{name} = ${i}" for i, name in enumerate(key_columns, start=1))
    rows = await conn.fetch(
        f"SELECT 'live' AS side, {columns} FROM {live}.{table} WHERE {where} "
        f"UNION ALL SELECT 'rebuilt', {columns} FROM {rebuilt}.{table} WHERE {where}",
        *key_values,
    )
    sides = [r["side"] for r in rows]
    if sorted(sides) != ["live", "rebuilt"]:
        return []
    live_row, rebuilt_row = (dict(r) for r in sorted(rows, key=lambda r: r["side"]))
    return [name for name in live_row if name != "side" and live_row[name] != rebuilt_row[name]]
