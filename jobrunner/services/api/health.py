"""What ``GET /health`` reports: whether this API instance can serve, and whether the parts it
cannot see from here are working (invariant "Health tells the truth").

- ``unavailable`` (HTTP 503): this instance cannot reach NATS or Postgres (or Postgres does not
  answer within ``health_postgres_timeout_seconds``, or NATS the stream's end within
  ``health_nats_timeout_seconds``); a load balancer should send requests elsewhere.
- ``degraded`` (HTTP 200: the instance serves, and taking every API instance out of a load
  balancer would not help): events set aside by the projector, a projector that does not keep up
  (the oldest event waiting for it was stored more than ``projector_stuck_seconds`` ago: a stopped
  or stuck projector and a stalled stream reader look alike from here), read models still
  missing after as long (no projector at work: ``readmodelgate.UnbuiltReadModels``), a rebuild
  of them with no projector at it for as long (``readmodelgate.AbandonedRebuild``), no runner
  alive, or NATS too slow for health's later reads (NATS_SLOW: the projector's progress or the
  runners unknown).
- ``ok`` (HTTP 200) otherwise.

Each problem comes with a machine-readable code and a sentence in ``problems``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import msgspec

from jobrunner.common import looptime, postgresconnect, runnerpool
from jobrunner.common.database import READ_SCHEMA
from jobrunner.common.looptime import within_loop_time
from jobrunner.common.readmodelversion import READMODEL_VERSION
from jobrunner.services.api import readmodelgate
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.readpool import ReadModelsTimeout

T = TypeVar("T")


class Problem(msgspec.Struct, frozen=True):
    # EVENTS_SET_ASIDE | PROJECTOR_STUCK | PROJECTOR_ABSENT | REBUILD_ABANDONED | NO_RUNNER | ...
    code: str
    message: str


async def report(ctx: ApiContext) -> tuple[dict[str, Any], int]:
    """The body of ``GET /health`` and its HTTP status."""
    problems: list[Problem] = []
    body: dict[str, Any] = {"instance": ctx.instance, "nats": ctx.nc.is_connected}
    postgres = await _postgres(ctx)
    applied = postgres.applied
    body["postgres"] = postgres.problem is None
    nats = NatsBound.from_now(ctx.settings.health_nats_timeout_seconds)
    last = await _stream_last_seq(ctx, nats)
    # Only this first read decides "unavailable": NATS did not answer at all. A later read cut
    # off (a NATS slow under load, a bound nearly spent) leaves its part unknown, degraded.
    stream_end_missed = nats.missed
    readmodels = postgres.readmodels
    if not readmodels.current:  # the stream's end, read here outside the Postgres bound
        readmodels = dataclasses.replace(readmodels, stream_last_seq=last)
    body.update(
        stream_last_seq=last,
        projected_seq=applied,
        projector_lag=last - applied if last is not None and applied is not None else None,
    )
    if not body["nats"]:
        problems.append(Problem("NATS_UNREACHABLE", "This API instance cannot reach NATS."))
    if postgres.problem is not None:
        problems.append(postgres.problem)
    unavailable = bool(problems)
    absent = ctx.unbuilt_read_models.absent_projector(
        readmodels if body["postgres"] else None, ctx.settings.projector_stuck_seconds
    )
    abandoned = ctx.readmodels.judge_rebuild(readmodels if body["postgres"] else None)
    if body["postgres"] and not readmodels.current:
        body["read_models"] = {
            "state": "newer" if readmodels.newer else "rebuilding",
            **readmodelgate.progress(readmodels),
        }
        problems.append(Problem(readmodels.code, readmodels.sentence()))
        if absent is not None:
            problems.append(Problem("PROJECTOR_ABSENT", absent))
        if abandoned is not None:
            problems.append(Problem("REBUILD_ABANDONED", abandoned))
        # Newer tables: this instance cannot serve them (another one may). Rebuilding: it
        # serves as soon as the projector swaps the rebuilt tables in.
        unavailable = unavailable or readmodels.newer
    if last is not None and applied is not None and readmodels.current:
        body["projector"] = await _projector(ctx, nats, applied, last, problems)
    if applied is not None:
        body["set_aside"] = _set_aside(postgres.set_aside, problems)
    if body["nats"]:
        body["runners"] = await _runners(ctx, nats, problems)
        seconds = ctx.settings.health_nats_timeout_seconds
        if stream_end_missed:  # connected, but frozen or overloaded: this instance cannot serve
            sentence = f"NATS did not answer this API instance within {seconds:g} s."
            problems.append(Problem("NATS_TIMEOUT", sentence + " Is it frozen or overloaded?"))
            unavailable = True
        elif nats.missed:
            sentence = (
                f"NATS answered this API instance slowly: not all of health's reads within "
                f"{seconds:g} s; the projector's progress or the runners are unknown."
            )
            problems.append(Problem("NATS_SLOW", sentence + " Is it overloaded?"))
    status = "unavailable" if unavailable else "degraded" if problems else "ok"
    body = {"status": status, **body, "problems": [msgspec.to_builtins(p) for p in problems]}
    ctx.health_log.answered(status, [p.code for p in problems])
    return body, 503 if unavailable else 200


@dataclass
class PostgresFacts:
    """What health read from Postgres; ``problem`` when it could not read all of it."""

    applied: int | None = None  # the projector's checkpoint
    readmodels: readmodelgate.ReadModelState = field(
        default_factory=lambda: readmodelgate.ReadModelState(READMODEL_VERSION)
    )
    set_aside: tuple[int, asyncpg.Record | None] | None = None  # None: unknown
    problem: Problem | None = None


async def _postgres(ctx: ApiContext) -> PostgresFacts:
    """Every read of Postgres health makes, on its own connection (not the read pool's: ten
    legitimate slow reads must not look like a frozen Postgres) and within one bound,
    ``health_postgres_timeout_seconds`` of the loop's own time (the health pool's, context.py):
    a probe gets an answer while Postgres is frozen, and no POSTGRES_TIMEOUT for an answer that
    came while the API's loop was busy with other work."""
    seconds = ctx.settings.health_postgres_timeout_seconds
    facts = PostgresFacts(readmodels=ctx.readmodels.state)
    try:
        async with ctx.health_pool.acquire(seconds) as conn:
            if not ctx.readmodels.serving:
                # In a rebuild: look again, Postgres only (not the gate's check: it asks NATS
                # too, and waits on its lock while another look waits for a pooled connection;
                # either would make a working Postgres look frozen here).
                found, rebuilt, rebuilder = await readmodelgate.look(conn)
                facts.readmodels = readmodelgate.ReadModelState(found, rebuilt, rebuilder=rebuilder)
            if facts.readmodels.found is None:
                # None made yet (a first start, the projector not through its own): no table to
                # read, and Postgres is not away (it was called unreachable at every first start).
                return facts
            query = f"SELECT last_seq FROM {READ_SCHEMA}.checkpoint"
            facts.applied = int(await conn.fetchval(query))
            facts.set_aside = await _set_aside_rows(conn)
    except ReadModelsTimeout:
        sentence = f"Postgres did not answer this API instance within {seconds:g} s."
        facts.problem = Problem("POSTGRES_TIMEOUT", sentence + " Is it frozen or overloaded?")
    except (*postgresconnect.STATEMENT_CANCELLED_ERRORS, asyncpg.LockNotAvailableError) as exc:
        # Postgres answered and cancelled the read: not away, and not frozen.
        facts.problem = Problem("POSTGRES_CANCELLED", _cancelled_sentence(exc))
    except postgresconnect.REFUSING_CONNECT_ERRORS as exc:
        # Postgres answers, and refuses this database_url: not an outage that passes.
        sentence = f"Postgres refuses this API instance's connection ({type(exc).__name__}): "
        facts.problem = Problem(
            "POSTGRES_REFUSED", sentence + postgresconnect.WHAT_TO_DO_ON_REFUSAL
        )
    except Exception:
        problem = Problem("POSTGRES_UNREACHABLE", "This API instance cannot reach Postgres.")
        facts.problem = problem
    return facts


def _cancelled_sentence(exc: BaseException) -> str:
    """POSTGRES_CANCELLED's sentence: what cancelled health's read, as far as it can tell (its
    connection does not time statements: timedconnection.py)."""
    if isinstance(exc, asyncpg.LockNotAvailableError):
        cause = "at its lock_timeout: a table health reads is locked by another session"
    else:
        cause = "at its statement_timeout, shorter than health's reads, or at an operator's cancel"
    return (
        f"Postgres answered this API instance but cancelled health's read ({cause}); "
        "the read models' state is unknown."
    )


async def _set_aside_rows(conn: Any) -> tuple[int, asyncpg.Record | None]:
    """How many events the projector set aside, and the last one."""
    try:
        count = await conn.fetchval(f"SELECT count(*) FROM {READ_SCHEMA}.projector_failures")
        row = await conn.fetchrow(
            "SELECT stream_seq, subject, event_type, job_id, error, recorded_at "
            f"FROM {READ_SCHEMA}.projector_failures ORDER BY stream_seq DESC LIMIT 1"
        )
    except asyncpg.UndefinedTableError:  # a projector older than the table: nothing set aside
        return 0, None
    return int(count), row


@dataclass
class NatsBound:
    """One bound over all of health's reads of NATS: ``left`` is what the reads before have not
    used; ``missed`` once a read ran past it (the reads after it are not tried: each would only
    wait out what is left). ``gives_up_at``: a backstop on wall time (``MOST_BOUNDS`` bounds
    from the first read) over all the reads, so that a loop blocked again and again cannot
    stretch them further: a probe answered late is as bad as one answered wrong."""

    left: float  # seconds
    gives_up_at: float  # on the event loop's clock
    missed: bool = False

    @classmethod
    def from_now(cls, seconds: float) -> NatsBound:
        now = asyncio.get_running_loop().time()
        return cls(seconds, now + seconds * looptime.MOST_BOUNDS)


async def _read_nats(nats: NatsBound, read: Callable[[], Awaitable[T]]) -> T:
    """``read()`` within what is left of ``nats``'s bound; TimeoutError past it (nats-py's own
    request timeout counts too), and at once, without reading, when an earlier read missed it.

    Only the read under way is on the loop's own time (``common.looptime``): the API's loop
    blocked by its other work while NATS answered is not a NATS that failed to (``NATS_TIMEOUT``
    takes the instance out of a load balancer). What a read used is taken from the bound on
    wall time, blocked time included: a later read may then be cut off, which only leaves its
    part unknown (``NATS_SLOW``)."""
    if nats.missed:
        raise TimeoutError
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout_at(nats.gives_up_at):
            return await within_loop_time(read(), nats.left)
    except TimeoutError:
        nats.missed = True
        raise
    finally:
        nats.left = max(0.0, nats.left - (loop.time() - started))


async def _stream_last_seq(ctx: ApiContext, nats: NatsBound) -> int | None:
    try:
        return int(
            (await _read_nats(nats, lambda: ctx.js.stream_info(ctx.names.stream))).state.last_seq
        )
    except Exception:
        return None


async def _projector(
    ctx: ApiContext, nats: NatsBound, applied: int, last: int, problems: list[Problem]
) -> dict[str, Any]:
    """How long the oldest event not yet applied has waited: the stream stores each message's
    time, so one look tells a projector that stopped from one that is merely busy."""
    if applied >= last:
        return {"state": "caught_up", "oldest_waiting_seconds": 0.0}
    try:
        waiting = await _read_nats(
            nats, lambda: ctx.js.get_msg(ctx.names.stream, applied + 1, next=True)
        )
    except Exception:
        return {"state": "unknown", "oldest_waiting_seconds": None}
    seconds = (datetime.now(UTC) - waiting.time).total_seconds() if waiting.time else 0.0
    limit = ctx.settings.projector_stuck_seconds
    if seconds <= limit:
        return {"state": "catching_up", "oldest_waiting_seconds": round(seconds, 3)}
    problems.append(
        Problem(
            "PROJECTOR_STUCK",
            f"The projector has not applied stream sequence {waiting.seq}, stored "
            f"{seconds:.0f} s ago (limit {limit:g} s); {last - applied} events wait. "
            "Is the projector running, and can it reach NATS and Postgres?",
        )
    )
    return {"state": "stuck", "oldest_waiting_seconds": round(seconds, 3)}


def _set_aside(
    found: tuple[int, asyncpg.Record | None] | None, problems: list[Problem]
) -> dict[str, Any]:
    if found is None:  # Postgres did not answer in time: unknown, not none
        return {"count": None, "last": None}
    count, row = found
    if not count or row is None:
        return {"count": 0, "last": None}
    last = dict(row)
    last["recorded_at"] = last["recorded_at"].isoformat()
    problems.append(
        Problem(
            "EVENTS_SET_ASIDE",
            f"The projector could not apply {count} event(s) and set them aside; the last, "
            f"stream sequence {last['stream_seq']}, failed with: {last['error']}",
        )
    )
    return {"count": int(count), "last": last}


async def _runners(ctx: ApiContext, nats: NatsBound, problems: list[Problem]) -> dict[str, Any]:
    try:
        alive = await _read_nats(nats, lambda: runnerpool.alive_runners(ctx.js, ctx.names))
    except Exception:
        return {"alive": None, "ids": []}
    if not alive:
        problems.append(
            Problem("NO_RUNNER", "No runner is alive: requested jobs wait until one starts.")
        )
    return {"alive": len(alive), "ids": [beat.runner_id for beat in alive]}


FAILURES_SHOWN = 100


async def set_aside_events(ctx: ApiContext) -> dict[str, Any]:
    """The events the projector set aside, newest first (at most ``FAILURES_SHOWN``), with the
    stored message as far as it was kept."""
    try:
        count = await ctx.pool.fetchval(f"SELECT count(*) FROM {READ_SCHEMA}.projector_failures")
        rows = await ctx.pool.fetch(
            "SELECT stream_seq, subject, event_type, job_id, error, raw, recorded_at "
            f"FROM {READ_SCHEMA}.projector_failures ORDER BY stream_seq DESC LIMIT $1",
            FAILURES_SHOWN,
        )
    except asyncpg.UndefinedTableError:  # a projector older than the table: nothing set aside
        return {"count": 0, "events": []}
    found = [dict(r) | {"recorded_at": r["recorded_at"].isoformat()} for r in rows]
    return {"count": int(count), "events": found}
