"""The API serves only read models whose version it knows (README "Upgrading").

While the projector rebuilds older tables (services/projector/upgrade.py), or before it created
them, every request that would read them gets 503 ``READ_MODELS_REBUILDING`` with the rebuild's
progress (``REBUILD_ABANDONED`` instead, with what to do, once the watch or ``/health`` found
the rebuild without a rebuilder for ``projector_stuck_seconds``); tables written by a newer
jobrunner get 503 ``READ_MODELS_NEWER``. Never a 500 from a column that is not there, never a
page from half-migrated tables.

The version is looked up once at start and then in the background; while the tables are not
current each request looks again (concurrent ones share one look), so the first request after
the swap is served.

Postgres away at the API's start (stopped, or frozen: a connect that hangs) does not stop the
start: the first look is bounded (``look_seconds``, ``health_postgres_timeout_seconds``) and the
API serves without knowing the version (``known`` false). Meanwhile every request that is not
exempt looks again within that bound (or takes the answer of a look under way, the watch's too,
failed or not) and, still unknown, goes on: a read meets the same Postgres the look could not
reach and answers 503 with its own code (``READ_MODELS_UNAVAILABLE``, ``READ_MODELS_TIMEOUT``:
errors.py), while what needs no read model (``POST /api/jobs``, the streams of jobs just posted)
is served from NATS. The background watch looks every ``RECHECK_SECONDS`` until a look answers,
and from then on the version gates requests as above.

Postgres refusing the API's ``database_url`` (a wrong password or user, no such database) is not
an outage: the first look raises it and the API's start ends with it, as the projector's does;
met later (a database dropped, a password changed), requests answer 503 ``POSTGRES_REFUSED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import structlog
from litestar import Request, Response
from nats.js import JetStreamContext

from jobrunner.common import postgresconnect, readmodelversion, stopping
from jobrunner.common.readmodelversion import READMODEL_VERSION, UPGRADE_SCHEMA
from jobrunner.contracts.names import Names
from jobrunner.services.api.errors import ApiError, try_again_later, warn_postgres_refused
from jobrunner.services.api.readpool import ReadPool

log = structlog.get_logger()

# How often the version is looked at again in the background while it is current (a newer
# jobrunner may swap its tables in meanwhile), and while it is not.
CURRENT_CHECK_SECONDS = 5.0
RECHECK_SECONDS = 0.5
RETRY_AFTER_SECONDS = 5
# The longest a working projector leaves a rebuild begun with nobody holding its lock: its pause
# before the next attempt after a failed one (projector/outage.py RETRY_PAUSE_MAX, 5 s) and its
# new connection's lock. ``projector_stuck_seconds`` shorter than this (a test's 2 s, say) would
# call every retried rebuild abandoned, so REBUILD_ABANDONED waits at least this long.
REBUILD_RETRY_GAP_SECONDS = 7.0
# The watch's stop: a look under way when its cancel was lost ends within its NATS request's
# timeout (5 s), or the read pool's deadline. Past this it is left, and logged.
STOP_SECONDS = 7.0
# What answers without the read models: health, metrics (what the services hold in memory, to
# be read during a rebuild and while Postgres is away), static files, signing in, tokens (in
# NATS), the job types (configuration) and the OpenAPI document.
EXEMPT_PATHS = frozenset(
    {
        "/health",
        "/metrics",
        "/login",
        "/login.css",
        "/logout",
        "/api/me",
        "/api/tokens",
        "/api/job-types",
    }
)
EXEMPT_PREFIXES = ("/static/", "/api/tokens/", "/api/schema")


@dataclass(frozen=True)
class ReadModelState:
    found: int | None  # the version in Postgres (None: no read models yet)
    rebuilt_seq: int | None = None  # how far a rebuild has come (its own checkpoint)
    stream_last_seq: int | None = None  # where the stream ended when this was looked at
    # Whether a rebuilder holds the rebuild's lock (None: not looked at, no rebuild begun).
    rebuilder: bool | None = None

    @property
    def current(self) -> bool:
        return self.found == READMODEL_VERSION

    @property
    def newer(self) -> bool:
        return self.found is not None and self.found > READMODEL_VERSION

    @property
    def code(self) -> str:
        return "READ_MODELS_NEWER" if self.newer else "READ_MODELS_REBUILDING"

    def sentence(self) -> str:
        if self.newer:
            return (
                f"The read models were written by a newer jobrunner (version {self.found}; this "
                f"API understands {READMODEL_VERSION}): upgrade this API instance."
            )
        if self.found is None:
            return "The read models are being created by the projector; try again shortly."
        return (
            f"The read models are being rebuilt from the event stream for this jobrunner's "
            f"version {READMODEL_VERSION} (found {readmodelversion.describe(self.found)}); "
            f"try again shortly."
        )


class UnchangedSince:
    """How long the looks have found the read models' version and a rebuild's progress the
    same (``found``, ``rebuilt_seq``): counted from the first look that found them so."""

    def __init__(self) -> None:
        self._seen: tuple[int | None, int | None] | None = None
        self._since = 0.0

    def forget(self) -> None:
        """The next look counts from itself."""
        self._seen = None

    def seconds(self, state: ReadModelState, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        seen = (state.found, state.rebuilt_seq)
        if seen != self._seen:
            self._seen, self._since = seen, now
        return now - self._since


class UnbuiltReadModels:
    """How long this API instance has seen the read models missing, or older with no rebuild
    begun, unchanged: the projector makes its tables, or begins a rebuild, within moments of
    its start, so past ``projector_stuck_seconds`` of that no projector is at work. A rebuild
    under way (its own checkpoint exists) is left alone: its index builds may take minutes."""

    def __init__(self) -> None:
        self._unchanged = UnchangedSince()

    def absent_projector(
        self, state: ReadModelState | None, limit: float, now: float | None = None
    ) -> str | None:
        """What health says (``PROJECTOR_ABSENT``) once ``state``, not current, has not changed
        for ``limit`` seconds; None before. Asked at every look: ``state`` None (Postgres not
        read) or current forgets the first look, so tables missing again later (a database
        made anew) are counted from then, not from long ago."""
        if state is None or state.current:
            self._unchanged.forget()
            return None
        waited = self._unchanged.seconds(state, now)
        if state.newer or state.rebuilt_seq is not None or waited <= limit:
            return None
        looked = f"in the {waited:.0f} s this API instance has looked (limit {limit:g} s)"
        where = "pointed at this database and this NATS, and see its log."
        if state.found is None:
            return (
                f"No projector is at work: no read models have been made {looked}. Start the "
                f"projector (`jobrunner projector`, or `jobrunner up`), {where}"
            )
        # Older tables: an upgrade whose new API started before its new projector.
        return (
            "No projector of this version has begun the rebuild of the read models "
            f"(version {state.found} found, {READMODEL_VERSION} read here) {looked}. Start this "
            f"version's projector (`jobrunner projector`, or `jobrunner up`), {where}"
        )


class AbandonedRebuild:
    """How long this API instance has seen a rebuild begun (its own checkpoint exists) with no
    rebuilder at it (nobody holds its lock: ``readmodelversion.REBUILD_LOCK``) and no progress.
    A rebuilding projector holds the lock from its rebuild's start to its swap, through index
    builds that may take minutes; one that died (SIGKILL, its host gone) let go of it with its
    Postgres session. Past ``projector_stuck_seconds`` of that, and never within
    ``REBUILD_RETRY_GAP_SECONDS`` (a projector retrying a failed rebuild takes the lock again
    after a pause of up to 5 s), ``GET /health`` and the API's 503s say ``REBUILD_ABANDONED``:
    the rebuild waits for a projector, which resumes it from its checkpoint."""

    def __init__(self) -> None:
        self._unchanged = UnchangedSince()

    def abandoned(
        self, state: ReadModelState | None, limit: float, now: float | None = None
    ) -> str | None:
        """The sentence once a rebuild has had no rebuilder, unchanged, for ``limit`` seconds;
        None before, and as soon as one holds the lock again."""
        if state is None or state.rebuilt_seq is None or state.rebuilder is not False:
            self._unchanged.forget()
            return None
        limit = max(limit, REBUILD_RETRY_GAP_SECONDS)
        waited = self._unchanged.seconds(state, now)
        if waited <= limit:
            return None
        return (
            f"The rebuild of the read models stopped at event {state.rebuilt_seq}: no projector "
            f"has been rebuilding them in the {waited:.0f} s this API instance has looked (limit "
            f"{limit:g} s); the last one ended midway (killed, or its host gone). Start the "
            "projector (`jobrunner projector`, or `jobrunner up`): it resumes the rebuild where "
            "it stopped. If one is running, see its log."
        )


class ReadModelGate:
    """The read models' version as this API instance last saw it, and what its requests are
    told while it is not this one's. Whether a rebuild has been abandoned (``pg_locks``) is
    looked at by the background watch and by ``GET /health`` only, never on a request's path:
    requests are told what those looks last found (``abandoned``)."""

    def __init__(
        self,
        pool: ReadPool,
        js: JetStreamContext,
        names: Names,
        stuck_seconds: float,
        look_seconds: float | None = None,
    ) -> None:
        self._pool = pool
        self._js = js
        self._names = names
        self._stuck_seconds = stuck_seconds  # projector_stuck_seconds
        # The bound of a look while the version is not known (None: the pool's read deadline).
        self._look_seconds = look_seconds
        self.state = ReadModelState(READMODEL_VERSION)
        # Whether a look has answered since the start: until then ``state`` is a guess.
        self.known = False
        self._failed_looks = 0
        self._abandoned_rebuild = AbandonedRebuild()
        # REBUILD_ABANDONED's sentence, as the last look at the rebuild's lock found it.
        self.abandoned: str | None = None
        self._checked = 0.0
        self._lock_checked = 0.0  # when the last look that read the rebuild's lock began
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> bool:
        """Whether the read models are known to be this version: requests read them at once."""
        return self.known and self.state.current

    async def start(self) -> None:
        """Look once (within ``look_seconds``), then watch in the background. Postgres away
        does not hold the start: the API serves what needs no read model meanwhile."""
        await self.check()  # a refusal (wrong password, no such database) ends the start
        if not self.known:
            log.warning(
                "read models not reached at start (Postgres away or not answering): requests "
                "that read them answer 503 until Postgres answers; jobs can be started",
                looked_within=self._look_seconds,
            )
        self._task = asyncio.create_task(self._watch())

    async def close(self, within: float | None = None) -> None:
        """End the watch, waiting ``within`` seconds at most (``STOP_SECONDS``: a look that
        lost its cancel)."""
        if self._task is not None:
            within = STOP_SECONDS if within is None else within
            await stopping.end_loop(self._task, self._stop, within=within)

    def judge_rebuild(self, state: ReadModelState | None) -> str | None:
        """REBUILD_ABANDONED's sentence for ``state``, a look that read the rebuild's lock (None:
        Postgres not read), or None; what requests are told from now on."""
        self.abandoned = self._abandoned_rebuild.abandoned(state, self._stuck_seconds)
        return self.abandoned

    async def check(self, read_lock: bool = False) -> ReadModelState:
        """Look at the stored version (and, when it is not current, at the stream's end in
        NATS). One look at a time: a caller that waited for another's look takes its answer
        when that look began after the caller asked, or, while the version is not known, whenever
        it asked (a request, not the watch). Health does not come here (health.py): it
        must not wait on this lock, held while a look waits for a pooled connection, nor on
        NATS within its Postgres bound. ``read_lock`` (the watch's): whether a rebuilder holds
        the rebuild's lock is read too, and judged (REBUILD_ABANDONED); such a caller takes
        another's answer only when that look read the lock too (a request's does not)."""
        if not self.known and not read_lock and self._lock.locked():
            # Postgres not reached yet, and a look is under way (the watch's, most often): its
            # answer is as new as any, whenever this caller asked. Frozen, a request then waits
            # one look's bound at most, not that look's rest and a look of its own.
            async with self._lock:
                return self.state
        asked = time.monotonic()
        async with self._lock:
            if self._checked >= asked and (not read_lock or self._lock_checked >= asked):
                return self.state
            began = time.monotonic()
            try:
                async with self._pool.acquire(None if self.known else self._look_seconds) as conn:
                    found, rebuilt, holder = await look(conn, read_lock)
            except Exception as exc:
                if postgresconnect.refused(exc):
                    # Postgres answered and refused this database_url: no look will pass. The
                    # start ends with it; later (a database dropped, a password changed) the
                    # request is answered 503 POSTGRES_REFUSED (errors.py), the watch logs it.
                    raise
                # Postgres away (refused, timed out, a connection lost half-way): the requests
                # themselves report it as before, and the watch goes on; keep what we knew.
                # Callers that asked before this look began take its answer too: with Postgres
                # frozen, each waits one look's bound, not one per caller ahead of it.
                log.debug("read-model version unknown", error=str(exc))
                self._failed_looks += 1
                self._checked = began
                if read_lock:
                    self.judge_rebuild(None)
                return self.state
            last = None
            if found != READMODEL_VERSION:
                with contextlib.suppress(Exception):  # NATS away: progress unknown
                    last = (await self._js.stream_info(self._names.stream)).state.last_seq
            state = ReadModelState(found, rebuilt, last, holder)
            learned = not self.known and self._failed_looks > 0  # Postgres reached at last
            self.known = True
            if state.found != self.state.found or learned:
                if state.current:
                    log.info("the read models are current", version=found)
                else:
                    log.warning(state.sentence(), found=found, understood=READMODEL_VERSION)
            self.state = state
            self._checked = began
            if read_lock:
                self._lock_checked = began
                self.judge_rebuild(state)
            elif state.current:
                self.abandoned = None
            return state

    async def refusal(self) -> ApiError | None:
        """The 503 while the read models are not this version; None when they are, and
        while Postgres has not answered a look since the start (the request's own reads then
        say what is wrong, and what needs no read model is served)."""
        if self.serving:
            return None
        state = await self.check()
        if state.current or not self.known:
            return None
        code, sentence = self.reason(state)
        return try_again_later(code, sentence, retry_after=RETRY_AFTER_SECONDS, **progress(state))

    def reason(self, state: ReadModelState) -> tuple[str, str]:
        """The code and sentence a request is refused with while ``state`` is not current."""
        if self.abandoned is not None and not state.newer and state.rebuilt_seq is not None:
            return "REBUILD_ABANDONED", self.abandoned
        return state.code, state.sentence()

    async def _watch(self) -> None:
        # Until ``_stop``, not until a cancel: one that arrives as a look's NATS reply does is
        # lost, and the API's shutdown would wait for this loop for ever (``end_loop``).
        while not self._stop.is_set():
            await stopping.pause(
                self._stop, CURRENT_CHECK_SECONDS if self.serving else RECHECK_SECONDS
            )
            if not self._stop.is_set():
                try:
                    await self.check(read_lock=True)
                except postgresconnect.REFUSING_CONNECT_ERRORS as exc:
                    warn_postgres_refused("the read models' watch", exc)


async def look(conn: Any, read_lock: bool = True) -> tuple[int | None, int | None, bool | None]:
    """The stored version; when it is not this one, how far a rebuild has come and, when
    ``read_lock``, whether a rebuilder holds its lock (None: not looked at, or no rebuild
    begun). Postgres only, on the caller's connection."""
    found = await readmodelversion.stored_version(conn)
    rebuilt = holder = None
    if found != READMODEL_VERSION and await conn.fetchval(
        "SELECT to_regclass($1) IS NOT NULL", f"{UPGRADE_SCHEMA}.checkpoint"
    ):
        rebuilt = await conn.fetchval(
            f"SELECT last_seq FROM {UPGRADE_SCHEMA}.checkpoint WHERE id = 1"
        )
        if read_lock:
            holder = await readmodelversion.rebuild_held(conn)
    return found, rebuilt, holder


def progress(state: ReadModelState) -> dict[str, Any]:
    """What a client (and ``GET /health``) is told about the read models."""
    body: dict[str, Any] = {"version": state.found, "expected_version": READMODEL_VERSION}
    if not state.current and not state.newer:
        body["rebuild"] = {
            "events_applied_upto": state.rebuilt_seq,
            "stream_last_seq": state.stream_last_seq,
        }
    return body


def exempt(path: str) -> bool:
    return path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES)


async def refuse_unready(request: Request[Any, Any, Any]) -> Response[Any] | None:
    """Litestar ``before_request``: answer 503 instead of reading tables of another version."""
    if exempt(request.url.path):
        return None
    gate: ReadModelGate = request.app.state.ctx.readmodels
    refusal = await gate.refusal()
    if refusal is None:
        return None
    if is_page_visit(request.headers.get("accept", "")):
        # A browser opening a page gets the sentence, not a JSON document; scripts keep JSON.
        return Response(
            refusal.message,
            status_code=refusal.status,
            media_type="text/plain",
            headers=refusal.headers,
        )
    return refusal.response()


def is_page_visit(accept: str) -> bool:
    """A browser's navigation asks for HTML first; fetch() and API clients do not."""
    return "text/html" in accept.lower()
