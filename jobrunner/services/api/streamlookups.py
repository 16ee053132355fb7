"""A live stream's reads of the read models: each within a short bound, none for a while after
one failed, and none while the read models are not known to be this version.

``/api/jobs/stream`` looks up what an event does not tell (the state, batch and owner of a job
it first meets through a later event, how far the projector got, a batch's row). With Postgres
stopped such a read is refused at once, and the stream goes on from what the events tell
(job_updates.py). With Postgres frozen (SIGSTOPped, a hung disk) a read waited for the read
pool's deadline (``api_read_timeout_seconds``, 60 s) with no keep-alive, and its
``ReadModelsTimeout`` then ended the stream: browsers reconnected in a loop, each new stream
meeting the same wait. So a stream's reads are bounded by ``stream_read_timeout_seconds`` (5 s:
longer than health's 1 s, so that a Postgres that is merely slow costs a stream no look-up;
below the keep-alive's interval), and past it count as Postgres away, as a refusal does. Once a
read succeeds again after one failed, and the projector has applied every event the stream
handled meanwhile, the stream tells its client to ``resync`` (job_updates.py): what it sent
meanwhile came from the events alone, and an own-jobs stream hid every job whose owner it could
not read (security/scope.py), its own among them. (Sent as soon as reads answer, the client's
reload met a projector still behind on the same Postgres and read the job running.) After a read
that failed either way no stream of this API reads for ``PAUSE_SECONDS`` (``StreamReadsAway``,
one for all streams), then one read at a time tests whether Postgres answers again: each read
would wait the same bound, and a burst of events of jobs it does not know (a batch's jobs
ending) would hold the stream one bound per event (and N streams would each wait it, each
terminating a pooled connection). A read past the bound on a
loaded machine whose Postgres merely answers slowly is given up the same way: the event is sent
from what it tells, the look-up made again at a later event. A job's stream reads the job's row
as it opens the same way (routes/streams.py): past the bound it knows the job from its
JobRequested.

The gate (readmodelgate.py) checks a request once, as it arrives; a stream lives on. One opened
while the version was not known (Postgres away at the API's start), or whose tables a newer
jobrunner swapped in meanwhile, would read tables of another version, so a stream reads only
while the gate says ``serving``. While the version is not known it goes on from the events, as
with Postgres away; once it is known to be another one, every read raises
``ReadModelsOfAnotherVersion``, which ends the stream (a batch's row held for a read that can
never succeed would hold every later frame for ever, with keep-alives only).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import asyncpg

from jobrunner.common import postgresconnect
from jobrunner.common.database import READ_SCHEMA
from jobrunner.services.api.errors import POSTGRES_AWAY
from jobrunner.services.api.readmodelgate import RETRY_AFTER_SECONDS, ReadModelGate, progress
from jobrunner.services.api.readpool import (
    ReadModelsNotRead,
    ReadModelsOfAnotherVersion,
    ReadModelsTimeout,
    ReadPool,
)

if TYPE_CHECKING:
    from jobrunner.services.api.context import ApiContext, ProjectionTracker

# How long a stream reads nothing after a read that failed: the next event's look-up is made
# without one bound's wait meanwhile (the gate's watch looks about as often while serving).
PAUSE_SECONDS = 5.0


class ReadFailedForNow(asyncpg.exceptions.UnknownPostgresError):  # type: ignore[misc]
    """A look-up's Postgres error of a SQLSTATE asyncpg has no name for, in a class that may
    pass (``postgresconnect.transient_cause``: 57, 40, 53, 55P03), raised in its place with its
    fields: an ``except`` names classes, not SQLSTATE classes, and every stream's look-up is
    caught by ``except UNREADABLE``. Outside a stream the API answers it as it answers the
    error itself (errors.py: an UnknownPostgresError)."""

    @classmethod
    def of(cls, exc: asyncpg.PostgresError) -> ReadFailedForNow:
        failed = cls(*exc.args)
        failed.__dict__.update(exc.__dict__)  # sqlstate, message, detail...
        return failed


# What a stream treats as "the read models cannot tell just now": it goes on without them.
# (ReadModelsNotRead too: met outside a stream, it is a 503, errors.not_read.) A read Postgres
# cancelled (an operator, a statement_timeout) is one too: the next look-up may be answered.
# So is any other error that may pass (postgresconnect.TRANSIENT_STATEMENT_ERRORS: an operator's
# intervention, a deadlock, resources short, a lock_timeout; ReadFailedForNow, one asyncpg has
# no name for); before, a bare OperatorInterventionError, and until session 36 one of a SQLSTATE
# asyncpg does not know, ended the stream's look-ups.
UNREADABLE: tuple[type[Exception], ...] = (
    *POSTGRES_AWAY,
    ReadModelsNotRead,
    *postgresconnect.STATEMENT_CANCELLED_ERRORS,
    *postgresconnect.TRANSIENT_STATEMENT_ERRORS,
    ReadFailedForNow,
    ReadModelsTimeout,
)


def _failed_for_now(exc: Exception) -> Exception | None:
    """What a look-up that raised ``exc`` raises as UNREADABLE: ``exc`` itself, or
    ``ReadFailedForNow`` for a SQLSTATE asyncpg does not know in a class that may pass; None
    for anything else (raised as it is)."""
    if isinstance(exc, UNREADABLE):
        return exc
    if (
        isinstance(exc, asyncpg.exceptions.UnknownPostgresError)
        and postgresconnect.transient_cause(exc) is not None
    ):
        return ReadFailedForNow.of(exc)
    return None


class StreamReadsAway:
    """Whether the read models are taken as away for every stream of this API (one for all,
    on ApiContext): until ``until`` no stream reads, and past it one read at a time tests
    whether Postgres answers again (``testing``), the others going on without. Per stream, N
    browsers each waited the full bound every pause during a freeze, each terminating a pooled
    connection and opening a connect that waited half-open."""

    def __init__(self) -> None:
        self.until = 0.0  # monotonic; 0: reads answered last
        self.testing = False
        # Reads made that failed, of every stream: a read that answers tells its stream that
        # reads answer again only if none failed since it began (it may have begun before a
        # failure, a probe beside the stream or another stream's look-up, and answer after it).
        self.failures = 0


def stream_lookups(ctx: ApiContext) -> StreamLookups:
    """A stream's reads of the read models, bounded by ``stream_read_timeout_seconds``."""
    return StreamLookups(
        ctx.pool,
        ctx.readmodels,
        ctx.settings.stream_read_timeout_seconds,
        away=ctx.stream_reads_away,
    )


class StreamLookups:
    """One stream's reads of the read models (see the module's docstring)."""

    def __init__(
        self,
        pool: ReadPool,
        gate: ReadModelGate,
        bound: float,
        pause: float | None = None,
        away: StreamReadsAway | None = None,
    ) -> None:
        self._pool = pool
        self._gate = gate
        self._bound = bound  # stream_read_timeout_seconds
        self._pause = PAUSE_SECONDS if pause is None else pause
        self._away = StreamReadsAway() if away is None else away
        # A read failed or was not made, and none has succeeded since: what the stream sent
        # meanwhile came from the events alone (an own-jobs stream hid every job whose owner it
        # could not read).
        self.failed = False
        self._resync_due = False
        # A read failed or was not made since the stream last noted an event it handled.
        self._missed = False
        # The last event the stream handled while a read failed or was not made: the client's
        # reload must not come before the read models hold it (the projector, on the same
        # Postgres, may still be behind on a backlog when reads answer again).
        self._unsure_through = 0

    def handled(self, seq: int) -> None:
        """The stream handled its events up to ``seq`` (called after each read of the stream)."""
        if self._missed:
            self._unsure_through = max(self._unsure_through, seq)
            self._missed = self.failed

    async def take_resync(self, projection: ProjectionTracker) -> bool:
        """Whether the client should load its lists again (``resync``), for what the stream
        could not tell while reads failed: once reads succeed again and the read models hold
        every event the stream handled meanwhile (``projection`` from the projector's notices,
        else the checkpoint). False until then; asked again at the next keep-alive or read, as
        ``BatchUpdates.wait_applied`` waits for a batch's row."""
        if not self._resync_due or self.failed:
            return False
        if projection.applied < self._unsure_through:
            # The notices come only as the projector applies: one may have come before this API
            # heard (it started, or NATS was away), so the checkpoint is asked too.
            try:
                stored = await self.fetchval(f"SELECT last_seq FROM {READ_SCHEMA}.checkpoint")
            except UNREADABLE:
                return False
            if stored is None or stored < self._unsure_through:
                return False
        self._resync_due = False
        return True

    async def probe(self) -> bool:
        """One read that only shows whether reads succeed again (at a keep-alive of a stream whose
        read failed: a stream with no event meanwhile must learn it too; in a task beside the
        stream, job_updates.py): True when it answered. Failing is no error."""
        with suppress(*UNREADABLE):
            await self.fetchval("SELECT 1")
            return True
        return False

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._read(lambda conn: conn.fetch(query, *args))
        return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._read(lambda conn: conn.fetchrow(query, *args))
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._read(lambda conn: conn.fetchval(query, *args))

    async def _read(self, query: Callable[[Any], Awaitable[Any]]) -> Any:
        away = self._away
        if time.monotonic() < away.until or away.testing:
            self.failed = self._missed = True  # the stream goes on from the events alone
            raise ReadModelsNotRead(
                "A read of the read models (Postgres) failed or did not answer just now; "
                "try again shortly."
            )
        if not self._gate.serving:
            if self._gate.known:
                # Known not to be ours: no later read can succeed either (not UNREADABLE).
                state = self._gate.state
                raise ReadModelsOfAnotherVersion(
                    *self._gate.reason(state), progress(state), RETRY_AFTER_SECONDS
                )
            self.failed = self._missed = True
            raise ReadModelsNotRead(
                "This API has not yet read the read models' version since it started (Postgres "
                "did not answer it); try again shortly."
            )
        testing = away.until > 0.0  # the first read since a failure: the others wait for it
        away.testing = testing
        failures = away.failures
        try:
            result = await self._within_bound(query)
        except Exception as exc:
            failed = _failed_for_now(exc)
            if failed is None:
                raise
            away.until = time.monotonic() + self._pause
            away.failures += 1
            self.failed = self._missed = True
            if failed is exc:
                raise
            raise failed from exc
        finally:
            if testing:
                away.testing = False
        if testing:
            # Only the read that tested ends the pause: another, begun before a failure and
            # answered after it, would end the pause the failure just began.
            away.until = 0.0
        if self.failed and away.failures == failures:
            self.failed = False
            self._resync_due = True
        return result

    async def _within_bound(self, query: Callable[[Any], Awaitable[Any]]) -> Any:
        async with self._pool.acquire(self._bound) as conn:
            return await query(conn)
