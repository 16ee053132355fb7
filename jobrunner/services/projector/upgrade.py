"""Read models older than this jobrunner are rebuilt from the stream before anything reads them.

On start the projector (and ``jobrunner replay``) compare the version stored with the read models
(common/readmodelversion.py) with the one this code writes:

- no read models yet: they are created, with their version, in one transaction;
- the same version: nothing to do;
- a newer one: refused (``StateRefused``), one sentence; the newer jobrunner's tables stay as
  they are;
- an older one: with ``readmodel_auto_rebuild`` (the default) an online rebuild: the whole stream
  is projected into a schema of its own (``readmodel_upgrade``) beside the old tables, with its
  progress in the log; then, in one transaction holding the swap lock, the rebuilt schema takes
  the live one's name, and the projector goes on from its checkpoint with what came meanwhile.
  Without it: refused, naming the command.

Meanwhile the API answers 503 ``READ_MODELS_REBUILDING`` with the rebuild's progress (the old
tables' layout is not one it knows). A rebuild killed half-way leaves the live schema untouched;
the next start resumes from the rebuilt schema's own checkpoint (written with its rows).
Unlike ``jobrunner replay`` nothing is compared with the live tables: their layout differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jobrunner.common import database, eventstore, postgresconnect, postgreswatch, readmodelversion
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.postgresconnect import CHECK_CONNECT_SECONDS
from jobrunner.common.readmodelversion import READMODEL_VERSION, UPGRADE_SCHEMA
from jobrunner.common.refusal import StateRefused
from jobrunner.common.settings import Settings
from jobrunner.common.stopping import unless_stopped
from jobrunner.contracts.names import Names
from jobrunner.services.projector import outage, setaside, store, workpool
from jobrunner.services.projector.feed import EventFeed
from jobrunner.services.projector.replay import (
    FIRST_ANALYZE,
    PREVIOUS_LEFT,
    PREVIOUS_SCHEMA,
    Progress,
    analyze,
    build_indexes,
    collector_paused,
    drop_previous,
    set_autovacuum,
)
from jobrunner.services.projector.replaylock import (
    REPLAY_LOCK,
    ReplayLockLost,
    SwapState,
    connect_lock_holder,
    rebuilt_schema_transaction,
    swap_transaction,
)

log = structlog.get_logger()

# What a rebuild waiting out an outage logs (ensure_current_in_place).
REBUILD_INTERRUPTED_EVENT = "read-model rebuild cannot go on; rebuilding again"
REBUILD_LOCK_LOST_EVENT = (
    "read-model rebuild lost its replay lock: the Postgres session holding it ended before the "
    "swap, nothing was swapped; rebuilding again"
)
REBUILD_BACK_EVENT = "read models current again after failed attempts"

# What a cancelled version check (or creation of the read models on an empty database) left:
# its transaction rolled back. A projector's next attempt runs it again on its own.
NOTHING_CHANGED = (
    "nothing was changed; run `jobrunner replay` again (a projector's next attempt does so itself)"
)

# How long a stop waits for a cancelled rebuild to let go of its connections (its ROLLBACK and
# closes are round trips a frozen Postgres never answers): past it the rebuild is left, said in
# the log, and the projector's stop goes on; the next start resumes from the rebuilt schema's
# checkpoint, which commits with its rows. Its connections are then terminated (no round trip),
# so that the left rebuild ends and does not hold the process's exit. Half the stop's
# stop_seconds at most: the rest of the stop (the feed, NATS, the pool) has the other half.
REBUILD_STOP_SECONDS = 3.0


def rebuild_stop_seconds(settings: Settings) -> float:
    """How long a stop waits for a cancelled rebuild: REBUILD_STOP_SECONDS, within the stop's
    own bound (``stop_seconds``)."""
    return min(REBUILD_STOP_SECONDS, settings.stop_seconds / 2)


class Connections:
    """A rebuild's Postgres connections and pools, to terminate when a stop leaves it."""

    def __init__(self) -> None:
        self._held: list[asyncpg.Connection | asyncpg.Pool] = []

    def add(self, held: asyncpg.Connection | asyncpg.Pool) -> None:
        self._held.append(held)

    def terminate(self) -> None:
        for held in self._held:
            held.terminate()


@dataclass(frozen=True)
class Outcome:
    found: int | None  # the version found (None: no read models)
    rebuilt: bool
    events: int = 0
    checkpoint: int = 0
    # Why the replaced read models' schema (PREVIOUS_SCHEMA) could not be dropped after the
    # swap (Postgres went away then: the rebuild has succeeded all the same), None when it was.
    previous_left: str | None = None


async def ensure_current(
    settings: Settings,
    allow_rebuild: bool | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 1.0,
    held: Connections | None = None,
    retries: outage.RetryLog | None = None,
) -> Outcome:
    """Make the live read models this code's version, or raise ``StateRefused``; see the module
    docstring. ``allow_rebuild`` overrides ``settings.readmodel_auto_rebuild``; ``retries``:
    the log of the attempts so far (``ensure_current_in_place``), which says a rebuild's start
    once and its NATS errors throttled across them."""
    if allow_rebuild is None:
        allow_rebuild = settings.readmodel_auto_rebuild
    held = held or Connections()
    # Bounded (a frozen Postgres: asyncpg's own 60 s), and a socket's error is Postgres'
    # (`jobrunner replay` says it as its start's check does: cli.py). A work's session, as the
    # rebuild's others (WORK_SESSION_SETTINGS): no server statement_timeout cancels its wait for
    # another projector creating the schema; exempt from idle_session_timeout too, which this
    # short-lived session never needed but costs nothing.
    conn = await database.connect_or_unreachable(
        settings.database_url,
        timeout=CHECK_CONNECT_SECONDS,
        server_settings=postgreswatch.WORK_SESSION_SETTINGS,
    )
    held.add(conn)
    try:
        found = await readmodelversion.stored_version(conn)
        if found is None:
            async with conn.transaction():
                # Durable even where the server's default is not (a crash right after would
                # otherwise leave a projector whose checkpoint table is gone).
                await conn.execute("SET LOCAL synchronous_commit = on")
                # Two projectors starting at once on an empty database: one creates them.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext('jobrunner-schema'))")
                if await readmodelversion.stored_version(conn) is None:
                    await store.create_schema(conn)
                    await readmodelversion.record(conn, READ_SCHEMA, by="projector")
            return Outcome(found, rebuilt=False)
    except asyncpg.QueryCanceledError as exc:
        # Outside rebuild()'s own handler: a cancelled wait for the creation's lock (another
        # projector creating them) rolled the transaction back.
        raise postgresconnect.statement_cancelled(
            exc, settings.database_url, "the read-model version check", NOTHING_CHANGED
        ) from exc
    finally:
        await database.close_connection(conn)
    if found == READMODEL_VERSION:
        return Outcome(found, rebuilt=False)
    if found > READMODEL_VERSION:
        raise StateRefused(readmodelversion.newer_sentence(found))
    if not allow_rebuild:
        raise StateRefused(readmodelversion.rebuild_sentence(found))
    return await rebuild(
        settings, found, on_progress or log_progress, progress_interval, held, retries
    )


async def ensure_current_in_place(settings: Settings, stop: asyncio.Event) -> Outcome | None:
    """``ensure_current`` for the live projector: a rebuild that met an outage is started again
    here, after a growing pause, instead of ending the process, as the projector's own loop
    retries a batch (service.py): Postgres restarting (a connection refused or cut, at any
    point of the rebuild), NATS away, or its replay lock lost (the Postgres session holding it
    ended: a restart, a timeout, ``pg_terminate_backend``; nothing was swapped). It resumes from
    the rebuilt schema's checkpoint, or finds the read models current should another rebuild
    have swapped them in meanwhile. A refusal (``StateRefused``) raises at once. Returns None
    once ``stop`` is set: before an attempt, during one (cancelled: it resumes at the next
    start) or during a pause. (``jobrunner replay`` stops at a lost replay lock: exit 4.)
    """
    # The first failure said at once, then at most one line per RETRY_LOG_SECONDS for each
    # error_code (a lost replay lock just after an interruption is news, not a repeat), and
    # one when an attempt succeeds, as a batch's retries are (service.py): a Postgres down for
    # long wrote a line per attempt, every 5 s.
    retries = outage.RetryLog()
    while not stop.is_set():
        held = Connections()
        try:
            outcome = await unless_stopped(
                ensure_current(settings, held=held, retries=retries),
                stop,
                within=rebuild_stop_seconds(settings),
                what="the read-model rebuild (resumed from its checkpoint at the next start)",
                on_left=held.terminate,
            )
        except StateRefused:
            raise
        except Exception as exc:
            lost = isinstance(exc, ReplayLockLost)
            code = "REPLAY_LOCK_LOST" if lost else "REBUILD_INTERRUPTED"
            pause = retries.failed(
                REBUILD_LOCK_LOST_EVENT if lost else REBUILD_INTERRUPTED_EVENT,
                kind=code,
                error_code=code,
                error=f"{type(exc).__name__}: {exc}",
            )
            if await outage.wait_or_stop(stop, pause):
                break
            continue
        if outcome is not None:
            retries.succeeded(REBUILD_BACK_EVENT, rebuilt=outcome.rebuilt)
            if outcome.previous_left is not None:
                log.warning(PREVIOUS_LEFT, schema=PREVIOUS_SCHEMA, error=outcome.previous_left)
        return outcome
    return None


def log_progress(progress: Progress) -> None:
    left = progress.seconds_left
    log.info(
        "read models rebuilding",
        phase=progress.phase,
        events_done=progress.done,
        events_total=max(progress.target - progress.first_seq + 1, 0),
        rate_per_second=round(progress.rate),
        eta_seconds=None if left is None else round(left, 1),
    )


async def rebuild(
    settings: Settings,
    found: int,
    on_progress: Callable[[Progress], None],
    progress_interval: float = 1.0,
    held: Connections | None = None,
    retries: outage.RetryLog | None = None,
) -> Outcome:
    """Project the whole stream into ``UPGRADE_SCHEMA`` and swap it in (module docstring).

    Postgres frozen for ``replay_postgres_answer_seconds`` while it runs (its liveness
    probe unanswered: no statement of a rebuild has a bound of its own, an index build may
    rightly take minutes), or ending its connections, raises ``PostgresUnusable``
    (``POSTGRES_UNAVAILABLE``), its connections ended; a statement cancelled in Postgres,
    ``StatementCancelled``. What was loaded stays for the next attempt, which resumes from the
    rebuilt schema's checkpoint."""
    held = held or Connections()
    watch = postgreswatch.WorkWatch(settings.database_url, settings.replay_postgres_answer_seconds)
    swap = SwapState()
    try:
        return await _rebuild(
            settings, found, on_progress, progress_interval, held, watch, swap, retries
        )
    except Exception as exc:
        # A lost replay lock has a sentence of its own, unless the probe finds Postgres gone.
        in_chain = not isinstance(exc, ReplayLockLost)
        gone = await watch.why_failed(exc, in_chain=in_chain)
        if gone is not None:
            raise postgresconnect.went_away(
                gone,
                settings.database_url,
                "the read-model rebuild",
                _consequence(swap, postgres_gone=True),
            ) from exc
        cancel = postgresconnect.cancelled_error(exc) if in_chain else None
        if cancel is None:
            raise
        raise postgresconnect.statement_cancelled(
            cancel,
            settings.database_url,
            "the read-model rebuild",
            _consequence(swap, postgres_gone=False),
        ) from exc
    finally:
        await watch.stop()


def _consequence(swap: SwapState, postgres_gone: bool) -> str:
    """What a rebuild that met Postgres gone (``postgres_gone``), or had a statement
    cancelled, left of the live read models, and what to do."""
    once = ", or finds the read models current, once Postgres answers" if postgres_gone else ""
    return swap.consequence(
        PREVIOUS_SCHEMA,
        "the next rebuild or replay",
        "the next attempt (the projector's own, or `jobrunner replay` run again) resumes the "
        f"rebuild from its checkpoint{once}",
    )


async def _rebuild(
    settings: Settings,
    found: int,
    on_progress: Callable[[Progress], None],
    progress_interval: float,
    held: Connections,
    watch: postgreswatch.WorkWatch,
    swap: SwapState,
    retries: outage.RetryLog | None,
) -> Outcome:
    names = Names(settings.prefix)
    async with contextlib.AsyncExitStack() as resources:
        lock_holder = await connect_lock_holder(
            settings.database_url, settings.projector_postgres_dead_seconds
        )
        held.add(lock_holder)
        resources.push_async_callback(lock_holder.close)
        # From here on a frozen Postgres ends every connection of the rebuild (the pool too,
        # once added) at the probe's bound, the lock's wait included; ``rebuild`` stops it.
        await watch.start(on_gone=held.terminate)
        # One rebuild (or replay) at a time; a second projector waits here, then finds the
        # read models current.
        await lock_holder.execute("SELECT pg_advisory_lock($1)", REPLAY_LOCK)
        now = await readmodelversion.stored_version(lock_holder)
        if now is not None and now >= READMODEL_VERSION:
            if now > READMODEL_VERSION:
                raise StateRefused(readmodelversion.newer_sentence(now))
            return Outcome(found, rebuilt=False)
        # Said once, by the first attempt that gets this far (one that failed earlier, at a
        # connect or the lock's wait, said nothing).
        if retries is None or retries.once("rebuild begun"):
            log.warning(
                "the read models are older than this jobrunner: rebuilding them from the event "
                "stream; the API answers 503 READ_MODELS_REBUILDING until they are swapped in",
                found=readmodelversion.describe(found),
                needed=READMODEL_VERSION,
            )
        nc = await eventstore.connect(
            settings, "upgrade", errors=None if retries is None else _nats_errors(retries)
        )
        resources.push_async_callback(eventstore.close, nc)
        js = nc.jetstream()
        # Rows whose commit is lost in a crash are re-applied from the checkpoint written with
        # them; the swap itself commits synchronously. Two connections: build_indexes' three
        # builds run two at a time.
        pool = await workpool.open_work_pool(settings.database_url, size=2)
        held.add(pool)
        resources.push_async_callback(database.close_pool, pool)
        await eventstore.ensure_topology(js, names, settings)
        info = await js.stream_info(names.stream)
        first_seq = max(info.state.first_seq, 1)
        async with pool.acquire() as conn:
            resumed = await _resume_or_start(conn, lock_holder.get_server_pid())
            applied = await store.checkpoint(conn, UPGRADE_SCHEMA)
        progress = Progress(0, info.state.last_seq, max(first_seq, applied + 1))
        feed = EventFeed(js, names, settings, name="upgrade")
        resources.push_async_callback(feed.close)
        await feed.start(progress.first_seq)
        if resumed:
            log.info("resuming a read-model rebuild", after_seq=applied)
        on_progress(progress)
        last_report = time.monotonic()
        next_analyze = FIRST_ANALYZE
        with collector_paused():  # as in a replay: the batches in flight are no cycles
            while True:
                batch = await feed.fetch(timeout=0.5)
                if batch:
                    async with pool.acquire() as conn:
                        applied = await setaside.apply(conn, batch, feed.lookup, UPGRADE_SCHEMA)
                        if progress.done + len(batch) >= next_analyze:
                            # As in a replay's load: else each batch scans every job so far.
                            await analyze(conn, UPGRADE_SCHEMA)
                            next_analyze *= 2
                    progress.done += len(batch)
                    if time.monotonic() - last_report >= progress_interval:
                        last_report = time.monotonic()
                        progress.target = (await js.stream_info(names.stream)).state.last_seq
                        on_progress(progress)
                    continue
                progress.target = (await js.stream_info(names.stream)).state.last_seq
                if applied >= progress.target or not await _stored_after(js, names, applied):
                    break  # caught up (what the stream shows beyond was deleted meanwhile)
        progress.phase = "indexing"
        on_progress(progress)
        await build_indexes(pool, UPGRADE_SCHEMA)
        progress.phase = "swapping"
        on_progress(progress)
        # On the replay lock's own session, as a replay's swap: should that session have ended
        # (and another rebuild have taken the lock and refilled the rebuilt schema), nothing is
        # swapped and ReplayLockLost is raised (replaylock.py).
        async with swap_transaction(lock_holder, swap) as conn:
            # An older projector still running pauses between two of its batches.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", store.SWAP_LOCK)
            # What arrives from here on the projector applies after the swap, from the rebuilt
            # checkpoint: unlike a replay, nothing has to meet the old tables' checkpoint.
            if settings.readmodel_retention_days > 0:
                cutoff = datetime.now(UTC) - timedelta(days=settings.readmodel_retention_days)
                await store.prune(conn, cutoff, UPGRADE_SCHEMA)
            await conn.execute(f"DROP SCHEMA IF EXISTS {PREVIOUS_SCHEMA} CASCADE")
            if await readmodelversion.stored_version(conn) is not None:
                await conn.execute(f"ALTER SCHEMA {READ_SCHEMA} RENAME TO {PREVIOUS_SCHEMA}")
            await conn.execute(f"ALTER SCHEMA {UPGRADE_SCHEMA} RENAME TO {READ_SCHEMA}")
        # After the commit: queries still reading the old tables finish first. Its failure
        # is a warning (it said POSTGRES_UNAVAILABLE, the rebuilt read models live).
        previous_left = await drop_previous(pool)
        progress.phase = "done"
        on_progress(progress)
        log.info(
            "read models rebuilt and swapped in",
            version=READMODEL_VERSION,
            checkpoint=applied,
            events=progress.done,
            seconds=round(time.monotonic() - progress.started, 1),
        )
        return Outcome(
            found,
            rebuilt=True,
            events=progress.done,
            checkpoint=applied,
            previous_left=previous_left,
        )


def _nats_errors(retries: outage.RetryLog) -> Callable[[Exception], None]:
    """A rebuild attempt's NATS errors (its connection's, new at each attempt: refused while NATS
    is away, for as long as it is), said through the attempts' log: each kind once per its
    interval, across the attempts."""

    def said(exc: Exception) -> None:
        retries.said(
            "nats error",
            kind=f"nats {type(exc).__name__}",
            connection="upgrade",
            error=str(exc) or type(exc).__name__,
        )

    return said


async def _resume_or_start(conn: asyncpg.Connection, lock_holder_pid: int) -> bool:
    """Keep what a killed rebuild of this version left (its checkpoint went with its rows);
    anything else in ``UPGRADE_SCHEMA`` goes, only while the backend ``lock_holder_pid`` holds
    the replay lock (``rebuilt_schema_transaction``: the drop must not wait behind another
    rebuild's swap and then drop the schema it renamed live). Returns whether a rebuild is
    resumed."""
    if await readmodelversion.stored_version(conn, UPGRADE_SCHEMA) == READMODEL_VERSION:
        return True
    async with rebuilt_schema_transaction(conn, lock_holder_pid):
        await conn.execute(f"DROP SCHEMA IF EXISTS {UPGRADE_SCHEMA} CASCADE")
        await store.create_schema(conn, UPGRADE_SCHEMA, indexes=False)
        # Off for the load, as in a replay; a resumed rebuild finds it still off, and
        # build_indexes turns it back on.
        await set_autovacuum(conn, UPGRADE_SCHEMA, enabled=False)
        # Written now, in the rebuilt schema only: it becomes the live version with the swap.
        await readmodelversion.record(conn, UPGRADE_SCHEMA, by="projector upgrade")
    return False


async def _stored_after(js: JetStreamContext, names: Names, seq: int) -> bool:
    """Whether the stream still holds a message after ``seq``."""
    try:
        await js.get_msg(names.stream, seq + 1, next=True)
    except NotFoundError:
        return False
    return True
