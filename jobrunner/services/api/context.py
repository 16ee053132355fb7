"""What the API holds while it runs: clients built in the lifespan, never at import time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import asyncpg
import msgspec
import structlog
from litestar import Litestar
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.nuid import NUID

from jobrunner.common import (
    artifactpurges,
    artifactstore,
    database,
    eventstore,
    heap,
    metrics,
    stallwatch,
    stopping,
    subscription,
    timedconnection,
)
from jobrunner.common.jobtypes import JobType, load_job_types
from jobrunner.common.metricsexposition import PeerMetrics
from jobrunner.common.processname import process_name
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.common.timedconnection import TimedConnection
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api import readmodelgate, sse
from jobrunner.services.api.fanout import Fanout, Limits
from jobrunner.services.api.healthlog import HealthLog
from jobrunner.services.api.idempotency import IdempotencyKeys
from jobrunner.services.api.natswatch import NatsWatch
from jobrunner.services.api.posted import PostedJobs
from jobrunner.services.api.readerconnections import ReaderConnections
from jobrunner.services.api.readmodelgate import ReadModelGate, UnbuiltReadModels
from jobrunner.services.api.readpool import ReadPool
from jobrunner.services.api.sharedreads import SharedReads
from jobrunner.services.api.streamlookups import StreamReadsAway

log = structlog.get_logger()


# How long a write (a POST) waits for the projector so that an immediate GET finds what it wrote.
READ_YOUR_WRITES_TIMEOUT = 2.0
# uvicorn's wait for open requests (SSE streams among them) at a stop, before the lifespan's
# end: a third of the whole stop (stop_seconds), 5 s at most.
REQUESTS_STOP_SECONDS = 5.0


def requests_stop_seconds(settings: Settings) -> float:
    """How long uvicorn waits for open requests when the API stops (its
    ``timeout_graceful_shutdown``); the lifespan's end has the rest of ``stop_seconds``."""
    return min(REQUESTS_STOP_SECONDS, settings.stop_seconds / 3)


@dataclass
class ProjectionTracker:
    """Knows how far the projector has applied the stream, from its notices."""

    applied: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_notice(self, msg: Msg) -> None:
        try:
            seq = msgspec.json.decode(msg.data, type=events.ProjectedNotice).last_seq
        except msgspec.MsgspecError:
            return
        if seq > self.applied:
            async with self._changed:
                self.applied = seq
                self._changed.notify_all()

    async def wait_for(self, seq: int, timeout: float) -> bool:
        """Wait until the read models include stream sequence ``seq`` (read-your-writes)."""
        if self.applied >= seq:
            return True
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.applied >= seq)
        except TimeoutError:
            return False
        return True


@dataclass
class ApiContext:
    settings: Settings
    names: Names
    nc: NATS
    js: JetStreamContext
    pool: ReadPool
    health_pool: ReadPool
    job_types: dict[str, JobType]
    slots: SlotTable
    projection: ProjectionTracker
    fanout: Fanout
    idempotency: IdempotencyKeys
    readmodels: ReadModelGate
    peer_metrics: PeerMetrics
    # What /health logged of its answers (at most a line per ``health_log_seconds``).
    health_log: HealthLog
    # This instance's name, told by /health (``api_instance_id``, or one made at the start).
    instance: str
    # Jobs started here with ``wait=stored`` that the read models do not show yet.
    posted: PostedJobs = field(default_factory=PostedJobs)
    # Job rows being read for SSE streams, one read per job shared by its arriving viewers.
    job_rows: SharedReads[asyncpg.Record | None] = field(default_factory=SharedReads)
    # What /health has seen of read models not made yet (readmodelgate.UnbuiltReadModels).
    unbuilt_read_models: UnbuiltReadModels = field(default_factory=UnbuiltReadModels)
    # Whether live streams take the read models as away just now: one for all of them.
    stream_reads_away: StreamReadsAway = field(default_factory=StreamReadsAway)


async def read_pool(database_url: str, deadline_seconds: float) -> ReadPool:
    """The API's connections to the read models: it only reads, so a released connection
    needs no reset query (a round trip on every request otherwise). A connection Postgres
    refuses is ``PostgresUnreachable`` (503 READ_MODELS_UNAVAILABLE, errors.py); a read past
    ``deadline_seconds`` is ``ReadModelsTimeout`` (503 READ_MODELS_TIMEOUT, readpool.py)."""
    pool = await database.create_pool(
        database_url,
        # No connection made here: Postgres away at the start must not stop the API (it serves
        # what needs no read model, readmodelgate.py); the first read opens one.
        min_size=0,
        max_size=10,
        reset=database.keep_session,
        connect=database.connect_or_unreachable,
        # A statement Postgres cancels carries how long it ran and the session's
        # statement_timeout: a timeout is told from an operator's cancel on a server of any
        # language (errors.read_cancelled); each learns the timeout when opened, for a cancel
        # inside a transaction, after which it cannot be asked.
        connection_class=TimedConnection,
        init=timedconnection.init_connection,
        # A plan for each query's very values: a generic plan (what a prepared statement drifts
        # to after five runs) cannot use the trigram index for an unknown search pattern, nor
        # judge a filter's selectivity. Set once per session rather than per query.
        session_settings={"plan_cache_mode": "force_custom_plan"},
    )
    return ReadPool(pool, deadline_seconds)


async def health_pool(database_url: str, deadline_seconds: float) -> ReadPool:
    """``GET /health``'s own connection to Postgres (a pool of one, opened when first needed
    and again after a failure), outside the read pool: its bound then measures Postgres, not
    ten legitimate slow reads holding every pooled connection. Its bound counts the API loop's
    own time: the loop blocked by other work while Postgres answered is not a frozen Postgres
    (``POSTGRES_TIMEOUT`` takes the instance out of a load balancer)."""
    pool = await database.create_pool(
        database_url,
        min_size=0,
        max_size=1,
        reset=database.keep_session,
        connect=database.connect_or_unreachable,
    )
    return ReadPool(pool, deadline_seconds, on_loop_time=True)


def sse_limits(settings: Settings) -> Limits:
    return Limits(
        keepalive=settings.sse_keepalive_seconds,
        client_bytes=settings.sse_client_buffer_bytes,
        total_bytes=settings.sse_total_buffer_bytes,
        history_idle=settings.sse_history_idle_seconds,
        history_reads=settings.sse_history_reads,
    )


def lifespan(settings: Settings) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def _lifespan(app: Litestar) -> AsyncIterator[None]:
        names = Names(settings.prefix)
        job_types = load_job_types(settings.job_types_file)
        metrics.KNOWN.learn(job_types, (t.lock for t in job_types.values() if t.lock))
        nc = await eventstore.connect(settings, "api", on_closed_for_good="exit")
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        pool = await read_pool(settings.database_url, settings.api_read_timeout_seconds)
        probe_pool = await health_pool(
            settings.database_url, settings.health_postgres_timeout_seconds
        )
        tracker = ProjectionTracker()
        readmodels = ReadModelGate(
            pool,
            js,
            names,
            settings.projector_stuck_seconds,
            look_seconds=settings.health_postgres_timeout_seconds,
        )
        try:
            await readmodels.start()
        except BaseException:
            # Postgres refused database_url (ReadModelGate.start): the start ends, and with it
            # what it opened.
            await asyncio.gather(pool.close(), probe_pool.close(), eventstore.close(nc))
            raise
        sub = await nc.subscribe(names.projected_subject, cb=tracker.on_notice)
        readers = ReaderConnections(
            lambda: eventstore.connect(settings, "api-reader", on_closed_for_good="exit")
        )
        await readers.warm()
        app.state.ctx = ApiContext(
            settings=settings,
            names=names,
            nc=nc,
            js=js,
            pool=pool,
            health_pool=probe_pool,
            job_types=job_types,
            slots=SlotTable(js, names, settings.lease_ttl_seconds),
            projection=tracker,
            # One JetStream subscription per watched job, shared by its SSE clients.
            # ... each read on a connection of its own (readerconnections: no noisy neighbour).
            fanout=Fanout(
                js, names, sse.frames_for, sse_limits(settings), readers, sse.line_frames
            ),
            idempotency=IdempotencyKeys(js, names),
            readmodels=readmodels,
            peer_metrics=PeerMetrics(settings.metrics_peer_timeout_seconds),
            health_log=HealthLog(settings.health_log_seconds),
            instance=process_name(settings.api_instance_id),
        )
        # One probe of NATS for the process; its live viewers are told when it goes silent.
        probe_subject = names.api_probe_subject(NUID().next().decode())
        nats_watch = NatsWatch(nc, probe_subject, settings.nats_silence_seconds)
        nats_watch.listeners.append(app.state.ctx.fanout.tell_nats_silence)
        nats_watch.start()
        heap.freeze_startup_objects()
        heap.collect_young_less_often()
        # Artifact content another (killed) API left to purge: at start, then now and then.
        sweeper_stop = asyncio.Event()
        sweeper = asyncio.get_running_loop().create_task(
            artifactpurges.sweep_forever(js, names, settings, sweeper_stop),
            name="artifact-sweeper",
        )
        try:
            with stallwatch.watching():
                yield
        finally:
            # One deadline for the whole stop, after uvicorn's wait for open requests (cli.py):
            # bounds that each hold would add up, in series, past the supervisor's grace.
            deadline = stopping.Deadline(settings.stop_seconds - requests_stop_seconds(settings))
            # Postgres is apart from NATS: the pools close meanwhile.
            pools = asyncio.gather(
                pool.close(deadline.left(database.POOL_CLOSE_SECONDS)),
                probe_pool.close(deadline.left(database.POOL_CLOSE_SECONDS)),
            )
            try:
                # What still uses the NATS connection ends first, all at once; the connections
                # close in the rest. Purges of replaced content still waiting would only fail once
                # the connection is closed; what they leave, the next upload of the name purges.
                users = deadline.keeping(eventstore.CLOSE_KEEP_SECONDS)
                await asyncio.gather(
                    stopping.end_loop(
                        sweeper,
                        sweeper_stop,
                        within=users.left(artifactpurges.SWEEPER_STOP_SECONDS),
                    ),
                    artifactstore.stop_purges(js, users.left(artifactstore.PURGE_STOP_SECONDS)),
                    readmodels.close(users.left(readmodelgate.STOP_SECONDS)),
                    nats_watch.stop(users.left(nats_watch.silence_seconds)),
                    subscription.forget_deletes(users.left(subscription.FORGET_DELETES_SECONDS)),
                    eventstore.unsubscribe_within(
                        [sub],
                        users.left(eventstore.UNSUBSCRIBE_STOP_SECONDS),
                        "the projector's notices",
                    ),
                )
                await asyncio.gather(
                    readers.close(deadline.left(eventstore.CLOSE_MOST_SECONDS)),
                    eventstore.close(nc, deadline.left(eventstore.CLOSE_MOST_SECONDS)),
                )
            finally:
                # Also when a step raised: the pools' close is bounded, and not left unawaited.
                # The peers' connections close at once (no TLS goodbye is waited for).
                await asyncio.gather(pools, app.state.ctx.peer_metrics.close())

    return _lifespan
