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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import structlog
from nats.js import JetStreamContext, api

from contracts import codec
from contracts.names import Names
from jobrunner import database, eventstore
from jobrunner.database import READ_SCHEMA
from jobrunner.settings import Settings
from services.projector import store
from services.projector.projections import Change, project

log = structlog.get_logger()

REPLAY_SCHEMA = f"{READ_SCHEMA}_replay"
PREVIOUS_SCHEMA = f"{READ_SCHEMA}_previous"
# Events per fetch (and transaction) adapt to the events' size: a fetch stays near FETCH_BYTES,
# well under the NATS server's slow-consumer limit (64 MB pending per client), whether the events
# are 300-byte status changes or 100 kB batches of a thousand lines.
FETCH_BATCH_MIN, FETCH_BATCH_MAX = 100, 5000
FETCH_BYTES = 24 * 1024 * 1024
LIVE_PROJECTOR_TIMEOUT = 30.0
REPLAY_LOCK = store.SWAP_LOCK + 1  # one replay at a time (a session lock, gone with the pool)
# At most this many events are left for the swap transaction (the live projector waits on it).
SWAP_SLACK = 2000
# Tables compared after a replay, each with the columns that identify a row in a report.
COMPARED_TABLES = {"jobs": "id", "log_lines": "job_id, seq", "checkpoint": "id"}


class ReplayMismatch(Exception):
    """The rebuilt tables differ from the live ones; nothing was swapped."""

    def __init__(self, differences: dict[str, list[str]]) -> None:
        self.differences = differences
        lines = [f"{table}: {', '.join(keys)}" for table, keys in differences.items()]
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
    """Rebuild the read models from the stream and swap them in; see the module docstring."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "replay")
    js = nc.jetstream()
    pool = await database.create_pool(settings.database_url, min_size=1, max_size=2)
    started = time.monotonic()
    try:
        await eventstore.ensure_topology(js, names, settings)
        info = await js.stream_info(names.stream)
        first_seq = max(info.state.first_seq, 1)
        async with pool.acquire() as conn:
            await store.create_schema(conn)  # the live one, should this be a fresh install
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REPLAY_LOCK):
                raise RuntimeError("another replay is running")
            await conn.execute(f"DROP SCHEMA IF EXISTS {REPLAY_SCHEMA} CASCADE")
            await store.create_schema(conn, REPLAY_SCHEMA)
        progress = Progress(0, info.state.last_seq, first_seq)
        feed = EventFeed(js, names)
        await feed.start(first_seq)
        applied = 0
        held: list[tuple[int, list[Change]]] = []  # fetched, but past the live checkpoint
        last_report = 0.0
        stalled_since: float | None = None
        # Bulk phase: follow the stream, never getting ahead of the live projector (the two are
        # compared at one checkpoint), while the live projector and the API carry on.
        while True:
            fetched = False
            if not held:
                held = await feed.fetch()
                fetched = bool(held)
            async with pool.acquire() as conn:
                live = await store.checkpoint(conn)
            upto = [(seq, changes) for seq, changes in held if seq <= live]
            held = held[len(upto) :]
            if upto:
                stalled_since = None
                async with pool.acquire() as conn:
                    applied = await store.apply_batch(conn, upto, REPLAY_SCHEMA)
                progress.done += len(upto)
                if on_progress and time.monotonic() - last_report >= progress_interval:
                    last_report = time.monotonic()
                    progress.target = (await js.stream_info(names.stream)).state.last_seq
                    on_progress(progress)
                continue
            if not held and not fetched and applied >= live:
                break  # caught up with the stream and with the live projector
            if applied >= progress.target:
                # Jobs keep arriving: swap once the rest is small enough to finish in the swap.
                progress.target = (await js.stream_info(names.stream)).state.last_seq
                if progress.target - applied <= SWAP_SLACK:
                    break
            if held:
                # Ahead of the live projector: wait for it (it must be running).
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > LIVE_PROJECTOR_TIMEOUT:
                    raise RuntimeError(
                        f"the live projector has not passed stream sequence {live} for "
                        f"{LIVE_PROJECTOR_TIMEOUT:.0f} s; is it running?"
                    )
                await asyncio.sleep(0.05)
        if on_progress:
            on_progress(progress)
        # Swap phase: the live projector pauses between two batches while we finish.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", store.SWAP_LOCK)
            live = await store.checkpoint(conn)
            while applied < live:
                batch = held or await feed.fetch(timeout=5.0)
                held = []
                if not batch:
                    raise RuntimeError(f"the stream ended at {applied}, before the live {live}")
                upto = [(seq, changes) for seq, changes in batch if seq <= live]
                if upto:
                    applied = await store.apply_batch(conn, upto, REPLAY_SCHEMA)
                    progress.done += len(upto)
            await feed.close()
            if settings.readmodel_retention_days > 0:
                cutoff = datetime.now(UTC) - timedelta(days=settings.readmodel_retention_days)
                await store.prune(conn, cutoff, REPLAY_SCHEMA)
                await store.prune(conn, cutoff, READ_SCHEMA)
            differences = await compare(conn, READ_SCHEMA, REPLAY_SCHEMA)
            if differences and not accept_differences:
                raise ReplayMismatch(differences)
            tables = {
                t: int(await conn.fetchval(f"SELECT count(*) FROM {REPLAY_SCHEMA}.{t}"))
                for t in COMPARED_TABLES
            }
            await conn.execute(f"DROP SCHEMA IF EXISTS {PREVIOUS_SCHEMA} CASCADE")
            await conn.execute(f"ALTER SCHEMA {READ_SCHEMA} RENAME TO {PREVIOUS_SCHEMA}")
            await conn.execute(f"ALTER SCHEMA {REPLAY_SCHEMA} RENAME TO {READ_SCHEMA}")
        log.info("replay swapped in", checkpoint=applied, events=progress.done)
        if not keep_previous:
            # After the commit: queries still reading the old tables finish first.
            async with pool.acquire() as conn:
                await conn.execute(f"DROP SCHEMA IF EXISTS {PREVIOUS_SCHEMA} CASCADE")
        return ReplayReport(
            events=progress.done,
            seconds=time.monotonic() - started,
            checkpoint=applied,
            first_seq=first_seq,
            tables=tables,
            differences=differences,
        )
    finally:
        await pool.close()
        await eventstore.close(nc)


class EventFeed:
    """The stream from a sequence on, in batches, on a short-lived pull consumer.

    Without acknowledgements a message lost on a reconnect would never come again, so when a
    fetch finds nothing while the stream holds more, the consumer restarts after the last event
    received.
    """

    def __init__(self, js: JetStreamContext, names: Names) -> None:
        self._js = js
        self._names = names
        self._sub: JetStreamContext.PullSubscription | None = None
        self._batch = FETCH_BATCH_MIN * 5
        self._trust_next = True
        self.received = 0  # the last stream sequence handed out

    async def start(self, seq: int) -> None:
        await self.close()
        self._sub = await self._js.pull_subscribe(
            self._names.all_subjects,
            stream=self._names.stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=seq,
                inactive_threshold=120,
            ),
        )
        # A new consumer's first message is the next one the stream holds, whatever its number.
        self._trust_next = True

    async def fetch(self, timeout: float = 0.5) -> list[tuple[int, list[Change]]]:
        assert self._sub is not None
        try:
            msgs = await self._sub.fetch(self._batch, timeout=timeout)
        except TimeoutError:  # nats' own and asyncio's
            msgs = []
        if not msgs:
            last = (await self._js.stream_info(self._names.stream)).state.last_seq
            if last > self.received:
                await self._restart("nothing came while the stream holds more")
            return []
        average = sum(len(m.data) for m in msgs) / len(msgs)
        self._batch = int(min(max(FETCH_BYTES / average, FETCH_BATCH_MIN), FETCH_BATCH_MAX))
        batch: list[tuple[int, list[Change]]] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq <= self.received:
                continue  # delivered again after a restart
            if seq != self.received + 1 and not self._trust_next:
                # Messages went missing (a reconnect drops what was in flight).
                await self._restart(f"expected {self.received + 1}, got {seq}")
                break
            self._trust_next = False
            try:
                event = codec.decode(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                event = None  # skipped, exactly as the live projector skips it
            batch.append((seq, project(event, seq) if event is not None else []))
            self.received = seq
        return batch

    async def _restart(self, why: str) -> None:
        log.warning("replay feed restarts", after=self.received, reason=why)
        await self.start(self.received + 1)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None


async def compare(conn: asyncpg.Connection, live: str, rebuilt: str) -> dict[str, list[str]]:
    """Row-by-row comparison of every read-model table; up to five differing keys per table."""
    differences: dict[str, list[str]] = {}
    for table, key in COMPARED_TABLES.items():
        columns = await conn.fetchval(
            "SELECT string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) "
            "FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
            rebuilt,
            table,
        )
        rows = await conn.fetch(
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
        if rows:
            differences[table] = [
                f"{r['side']} {'/'.join(str(v) for v in list(r.values())[1:])}" for r in rows
            ]
    return differences
