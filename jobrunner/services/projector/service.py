"""The projector: follows the whole event stream and writes the read models."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobrunner.common import (
    backendpriority,
    database,
    eventstore,
    heap,
    metrics,
    postgresconnect,
    retry,
    stopping,
    subscription,
)
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.projector import (
    outage,
    peerliveness,
    setaside,
    store,
    timestamps,
    upgrade,
)
from jobrunner.services.projector.feed import CLOSE_SECONDS as FEED_CLOSE_SECONDS
from jobrunner.services.projector.feed import EventFeed
from jobrunner.services.projector.lag import Lag
from jobrunner.services.projector.watchdog import StallWatch

log = structlog.get_logger()
T = TypeVar("T")

# How long a stop waits for a cancelled batch to roll back and give its connection back before
# terminating the connection (Postgres frozen: the cancel and the ROLLBACK are never answered).
STOP_GRACE_SECONDS = 1.0

PRUNE_INTERVAL = 600.0  # seconds between read-model retention runs
# A transaction starts at least this long after the one before: a steady trickle (one job
# printing 200 lines/s, published a line or two per message) is then applied a few messages per
# transaction, not one, and a transaction costs the projector about a millisecond of CPU and
# Postgres most of another whatever it holds. An event after a quiet spell is applied at once;
# a flood's transactions take longer than this anyway.
TRANSACTION_INTERVAL = 0.02


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The projector's connections, their backends at its niceness (``background_nice``), each
    given up once its server has gone silent (``peerliveness``)."""

    async def init(conn: asyncpg.Connection) -> None:
        peerliveness.watch_peer(conn, settings.projector_postgres_dead_seconds)
        await timestamps.init_connection(conn)

    server_settings: dict[str, Any] = {
        # A lock wait has a bound too (a backend that lost its client holds the checkpoint
        # row until it notices): the batch then fails, is tried again, and says who holds it.
        "lock_timeout": str(int(lock_wait(settings) * 1000)),
        **peerliveness.server_settings(settings.projector_postgres_dead_seconds),
    }
    return await database.create_pool(
        settings.database_url,
        # No connection made here: the start waits for Postgres first (outage.py).
        min_size=0,
        max_size=2,
        init=backendpriority.at_own_niceness(init),
        session_settings=server_settings,
    )


def lock_wait(settings: Settings) -> float:
    """How long the projector's statements wait on a lock before the batch is tried again:
    twice the time a backend whose client is gone keeps its locks."""
    return settings.projector_postgres_dead_seconds * 2


async def run_projector(settings: Settings, stop: asyncio.Event) -> None:
    """Follow the whole stream from the checkpoint on and apply it to the read models.

    The checkpoint in Postgres, written with the rows, is the only record of progress: the
    projector reads the stream from right after it on an ephemeral flow-controlled consumer,
    so after any crash it starts exactly where its last transaction ended. Nothing to
    acknowledge, and nothing applied twice (anything at or below the checkpoint is skipped).
    Run one active projector per installation; a second one only waits on the checkpoint lock.
    """
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "projector", on_closed_for_good="exit")
    js = nc.jetstream()
    pool = await open_pool(settings)
    feed: EventFeed | None = None
    lag = Lag()
    lag.publish()
    # Its own stop, set at every exit (an error too, with ``stop`` not set): a cancel alone
    # can be lost in a look, and the projector would never exit (``stopping.end_loop``).
    looking_stop = asyncio.Event()
    looking = asyncio.create_task(lag.follow(js, names.stream, looking_stop), name="projector-lag")
    try:
        await eventstore.ensure_topology(js, names, settings)
        await retry.until_jetstream_ready(
            lambda: _remove_durable_consumer(js, names), "the event stream's consumers"
        )
        # Postgres away (not started yet, restarting, frozen): wait, saying so once.
        if not await outage.until_postgres_answers(settings.database_url, stop):
            return
        # Read models of an older layout are rebuilt (or refused) before the first write.
        if await upgrade.ensure_current_in_place(settings, stop) is None:
            return  # stopped while a rebuild waited out an outage
        last = await _checkpoint_at_start(pool, settings.database_url, stop)
        if last is None:
            return  # stopped while Postgres was away
        feed = EventFeed(js, names, settings, name="projector")
        if not await feed.start(last + 1, stop):
            return  # stopped while the reader could not open (NATS away or frozen)
        log.info("projector started", checkpoint=last)
        metrics.SERVICE_STARTED.set(1)  # after the line: `jobrunner up` shows it first
        heap.freeze_startup_objects()
        heap.collect_young_less_often()
        encoder = msgspec.json.Encoder()
        watch = StallWatch(js, names.stream, settings.projector_stuck_seconds)
        watch.progressed(last)
        lag.progressed(last)
        next_prune = 0.0
        loop = asyncio.get_running_loop()
        applied_at = -TRANSACTION_INTERVAL
        while not stop.is_set():
            if settings.readmodel_retention_days > 0 and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL
                cutoff = datetime.now(UTC) - timedelta(days=settings.readmodel_retention_days)
                # Cut short by a stop, as a batch is: a frozen Postgres held the stop for ever.
                pruned = await _pooled_unless_stopped(
                    pool, stop, functools.partial(store.prune, cutoff=cutoff)
                )
                if pruned is None:
                    break  # stopped: the next start prunes
                if pruned:
                    log.info("read-model retention pruned jobs", jobs=pruned, before=cutoff)
            batch = await feed.fetch(timeout=1.0, stop=stop)
            if not batch:
                await watch.idle()
                continue
            if (rest := applied_at + TRANSACTION_INTERVAL - loop.time()) > 0:
                batch += await feed.fetch_more(len(batch), rest)
            applied_at = loop.time()
            # The next batch is decoded while Postgres works on this one's COPY, not before
            # its first statements (EventFeed.hold).
            feed.hold()
            try:
                applied = await _apply_until_done(pool, batch, feed, stop, committed=last)
            except store.CheckpointBehind as behind:
                # Postgres came back without commits it had acknowledged: read again from
                # its checkpoint, or the events in between would never be applied.
                log.warning("projector reads again from the stored checkpoint", **behind.fields)
                await feed.close()
                feed = EventFeed(js, names, settings, name="projector")
                if not await feed.start(behind.stored + 1, stop):
                    break
                last = behind.stored
                continue
            if applied is None:
                break
            last = applied
            watch.progressed(last)
            lag.progressed(last)
            await nc.publish(names.projected_subject, encoder.encode(events.ProjectedNotice(last)))
    finally:
        # One deadline for the whole stop: bounds that each hold would add up, in series,
        # past the supervisor's grace. Postgres is apart from NATS: the pool closes meanwhile.
        deadline = stopping.Deadline(settings.stop_seconds)
        pool_closing = asyncio.ensure_future(
            database.close_pool(pool, deadline.left(database.POOL_CLOSE_SECONDS))
        )
        try:
            # What still uses the NATS connection ends first; the connection closes in the rest.
            users = deadline.keeping(eventstore.CLOSE_KEEP_SECONDS)
            await asyncio.gather(
                stopping.end_loop(looking, looking_stop, within=users.left()),
                _close_feed(feed, users.left(FEED_CLOSE_SECONDS)),
            )
            # After the feed's close: a failed link's consumer delete still under way.
            await subscription.forget_deletes(users.left(subscription.FORGET_DELETES_SECONDS))
            await eventstore.close(nc, deadline.left(eventstore.CLOSE_MOST_SECONDS))
        finally:
            # Also when a step raised: the pool's close is bounded, and not left unawaited.
            await pool_closing


async def _checkpoint_at_start(
    pool: asyncpg.Pool, database_url: str, stop: asyncio.Event
) -> int | None:
    """The stored checkpoint, or None when stopped first. Postgres may go away between the
    start's wait for it and this read (a restart just then): the read is tried again after the
    batches' growing pause until it answers, said once when it fails and once when it answers;
    a refusal (``postgresconnect``: wrong password, no such database) ends the start."""
    retries = outage.RetryLog()
    while True:
        try:
            last = await _pooled_unless_stopped(pool, stop, store.checkpoint)
        except Exception as exc:
            if postgresconnect.refused(exc):
                raise
            retries.failures += 1
            if retries.failures == 1:  # a warning once: the start waits, nothing is lost
                log.warning(
                    outage.WAITING_EVENT,
                    postgres=postgresconnect.server_of(database_url),
                    reading="the checkpoint",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_every_seconds=outage.RETRY_PAUSE_MAX,
                    what_to_do=await _what_to_do(pool, exc),
                )
            if await outage.wait_or_stop(stop, outage.pause_after(retries.failures)):
                return None
            continue
        if last is not None:
            retries.succeeded(outage.BACK_EVENT, postgres=postgresconnect.server_of(database_url))
        return last


async def _close_feed(feed: EventFeed | None, within: float) -> None:
    if feed is not None:
        await feed.close(within)


async def _apply_until_done(
    pool: asyncpg.Pool,
    batch: setaside.Batch,
    feed: EventFeed,
    stop: asyncio.Event,
    committed: int,
) -> int | None:
    """Apply ``batch``, setting aside the events that cannot be; on an outage (Postgres or NATS
    away) try the same batch again, with a growing pause, until it is applied: an outage never
    sets an event aside. Returns the new checkpoint, or None when stopped meanwhile; raises
    ``store.CheckpointBehind`` when the stored checkpoint is behind ``committed`` (what this
    projector had committed): Postgres came back without commits it had acknowledged. Checked
    inside every batch's transaction, not only after a failed one: the pool replaces a dead
    connection without a failure, and the batch would move the checkpoint past the lost ones."""
    # One line when the outage begins, then at most one per interval (with the attempts left
    # out), and one when the batch is applied: a Postgres restart wrote a line per attempt.
    retries = outage.RetryLog()
    while True:
        try:
            applied = await _apply_unless_stopped(pool, batch, feed, stop, committed)
            if applied is None:
                log.info("projector stopped during a batch; it is applied at the next start")
            else:
                retries.succeeded(
                    "projector applied the batch after an outage", first_seq=batch[0][0]
                )
            return applied
        except store.CheckpointBehind:
            raise
        except asyncpg.LockNotAvailableError:
            pause = retries.failed(
                "projector waited too long on a lock; retrying the batch",
                throttled=False,
                first_seq=batch[0][0],
                holders=await _checkpoint_holders(pool),
            )
        except Exception as exc:
            pause = retries.failed(
                "projector cannot apply a batch; retrying it",
                first_seq=batch[0][0],
                last_seq=batch[-1][0],
                error=f"{type(exc).__name__}: {exc}",
                what_to_do=await _what_to_do(pool, exc),
            )
        if await outage.wait_or_stop(stop, pause):
            return None


async def _apply_unless_stopped(
    pool: asyncpg.Pool,
    batch: setaside.Batch,
    feed: EventFeed,
    stop: asyncio.Event,
    committed: int,
) -> int | None:
    """One attempt at ``batch``: the new checkpoint, or None when ``stop`` is set first.

    A stop cancels the batch under way: a statement waiting on a lock would otherwise hold the
    stop for up to the lock wait (lock_timeout, 60 s by default). Cancelling first matters: the
    cancel reaches Postgres, so a backend waiting on a lock lets go of it. The cancel's ROLLBACK
    and release are round trips, though, which a frozen Postgres (SIGSTOPped: the kernel still
    acknowledges, so the liveness probe stays quiet) never answers; after STOP_GRACE_SECONDS the
    connection is terminated. Either way the transaction rolls back with the checkpoint, so the
    next start applies the batch again from there: nothing lost, nothing twice."""
    return await _pooled_unless_stopped(
        pool,
        stop,
        lambda conn: setaside.apply(
            conn, batch, feed.lookup, writing=feed.resume, committed=committed
        ),
    )


async def _pooled_unless_stopped(
    pool: asyncpg.Pool, stop: asyncio.Event, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T | None:
    """``work`` on a pooled connection: its result, or None when ``stop`` is set first (see
    ``_apply_unless_stopped``: cancelled, its connection terminated after
    ``STOP_GRACE_SECONDS``)."""
    held: list[asyncpg.Connection] = []

    async def on_connection() -> T:
        try:
            async with pool.acquire() as conn:
                held.append(conn)
                return await work(conn)
        finally:
            # Held until given back: the pool's release (a reset, round trips) waits on a
            # frozen Postgres as the work did, and the stop must terminate it there too.
            held.clear()

    task = asyncio.ensure_future(on_connection())
    stop_waited = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stop_waited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_waited.cancel()
        stopped = not task.done()  # or the caller cancelled
        if stopped:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
            if not done:
                for conn in held:
                    conn.terminate()
                # A connection still being made (the pool's, to a frozen Postgres) is not
                # ours to terminate: past one more grace it is left, and said.
                await stopping.wait_within(
                    {task},
                    STOP_GRACE_SECONDS,
                    "projector: Postgres work left running at the stop",
                    errors_retrieved=True,
                )
            if task.done() and not task.cancelled():
                task.exception()  # its error (a terminated connection) is the stop's
    if stopped:
        return None
    return task.result()


async def _what_to_do(pool: asyncpg.Pool, exc: BaseException) -> str:
    """``outage.what_to_do``, naming where a full disk of Postgres's lies when it tells."""
    directory = await outage.full_directory(pool, exc) if outage.disk_full(exc) else None
    return outage.what_to_do(exc, directory)


async def _checkpoint_holders(pool: asyncpg.Pool) -> list[dict[str, object]] | str:
    """The other backends holding a lock on the checkpoint table, to say what the projector
    waits on (a second projector, or a backend whose client has gone)."""
    try:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT a.pid, host(a.client_addr) AS client, a.application_name, a.state, "
                "a.xact_start::text FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                f"WHERE l.relation = '{database.READ_SCHEMA}.checkpoint'::regclass AND l.granted "
                "AND a.pid <> pg_backend_pid()"
            )
    except Exception as exc:  # only to log: the batch is retried either way
        return f"unknown ({type(exc).__name__}: {exc})"
    return [dict(r) for r in rows]


async def _remove_durable_consumer(js: JetStreamContext, names: Names) -> None:
    """Earlier versions followed the stream on a durable consumer: remove it, it is not used.
    A start step (the start's short timeout): a delete sent again is safe, "not found" is done."""
    with contextlib.suppress(NotFoundError):
        await retry.start_context(js).delete_consumer(names.stream, names.projector_consumer)
