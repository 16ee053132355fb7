"""Whether a command's Postgres still answers while its long statements run: a probe
(``SELECT 1``) on a connection of its own, every ``PROBE_EVERY`` seconds.

A replay's COPY, index builds and comparison may rightly take minutes on a big history, so no
statement timeout can tell a frozen Postgres from a busy one; nor can TCP keepalives, since a
frozen server's kernel still acknowledges. A Postgres that answers a ``SELECT 1`` on another
connection is alive however long the work's statement takes; one that leaves it unanswered for
``ANSWER_WITHIN`` seconds (frozen, or its host gone) or ends the probe's connection (restarted,
shut down) is gone: the watch then calls ``on_gone`` (which ends the work's connections, so that
its statements stop waiting) and says why in ``gone``. Those seconds are the event loop's own
(``common.looptime``): the work's long synchronous steps share the loop, and a loop held up by
them is no Postgres silent.

``WorkWatch`` is the probe as a piece of work uses it (`jobrunner replay`, the projector's
read-model rebuild): started once the work's connections are open, asked why the work failed,
stopped at its end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from jobrunner.common import database, postgresconnect
from jobrunner.common.looptime import within_loop_time
from jobrunner.common.postgresconnect import CHECK_CONNECT_SECONDS

log = structlog.get_logger()

# A working Postgres answers a SELECT 1 in milliseconds, a loaded one (index builds on every
# core, load 14 on 2 cores) in well under a second. The work's bound is the setting
# replay_postgres_answer_seconds (30 s by default: a host's stall must not end hours of work);
# this is the probe's own default.
ANSWER_WITHIN = CHECK_CONNECT_SECONDS
PROBE_EVERY = 1.0
# The sessions of a long work (its pool's, its lock holder's, its probe's): no statement
# timeout, whatever the server's default, as the design says: a COPY or index build may rightly
# take minutes, and the probe, not a timeout, tells a frozen Postgres. (A statement cancelled is
# not Postgres gone: postgresconnect.WENT_AWAY_ERRORS.) No idle_session_timeout either: the lock
# holder idles through the loading, the probe between two looks, a pooled connection between
# two batches; a server that ended one would fail the work.
WORK_STATEMENT_TIMEOUT = "0"
WORK_SESSION_SETTINGS = {"statement_timeout": WORK_STATEMENT_TIMEOUT, "idle_session_timeout": "0"}
# How often a work's backend checks, while it runs a statement, that its client is still there:
# the probe ends the work's connections (closes their sockets), but a frozen server's backend
# thawed later would otherwise run its COPY, index build or comparison to the end, holding the
# replay's and the swap's locks (the live projector paused, a rerun refused) for as long.
CLIENT_CHECK_INTERVAL = "1s"


async def connect_work(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """``database.connect_or_unreachable`` for a work's connection (a pool's ``connect``
    too), whose backend ends its statement once its client has gone
    (``client_connection_check_interval``), where the server can: Postgres 14 and later, on a
    platform with POLLRDHUP (Linux). Refused at the connect elsewhere (a non-zero value is an
    error there, an unknown setting before 14): connected again without it. In the startup
    packet, not a SET after it: no round trip more in the connection's set-up."""
    server_settings = kwargs.pop("server_settings", None) or {}
    checked = {**server_settings, "client_connection_check_interval": CLIENT_CHECK_INTERVAL}
    try:
        return await database.connect_or_unreachable(*args, server_settings=checked, **kwargs)
    except (asyncpg.InvalidParameterValueError, asyncpg.UndefinedObjectError) as exc:
        log.info("postgres cannot check for a gone client", error=str(exc))
    return await database.connect_or_unreachable(*args, server_settings=server_settings, **kwargs)


class LivenessWatch:
    """The probe of one piece of work; ``start`` it, ``stop`` it when the work ends."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        on_gone: Callable[[], None],
        answer_within: float = ANSWER_WITHIN,
        every: float = PROBE_EVERY,
    ) -> None:
        self._conn = conn
        self._on_gone = on_gone
        self._answer_within = answer_within
        self._every = every
        # Why Postgres counts as gone (None while it answers).
        self.gone: str | None = None
        # The probe's round in flight (its SELECT 1 sent), None while it sleeps: ``lost``
        # waits for it rather than cancel it, whose clean-up would end the probe's connection.
        self._round: asyncio.Future[str | None] | None = None
        self._task = asyncio.create_task(self._probe(), name="postgres liveness watch")

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            self._round = asyncio.ensure_future(self._ask())
            # Shielded: ``stop`` cancels this task, never the round (it ends on its own, within
            # ``answer_within``, its connection terminated should it be unanswered).
            gone = await asyncio.shield(self._round)
            self._round = None
            if gone is not None:
                self._found_gone(gone)
                try:
                    self._on_gone()
                except Exception:
                    # Nobody awaits this task for its result: said here, or never.
                    log.exception("the liveness watch's on_gone failed", gone=gone)
                return

    async def _ask(self) -> str | None:
        """One ``SELECT 1``: None answered (a cancel is an answer); else why Postgres counts as
        gone (unanswered within ``answer_within``, its connection terminated then; or failed)."""
        # The simple query protocol: one round trip (a fetchval prepares its statement first,
        # a second one).
        query = asyncio.ensure_future(self._conn.execute("SELECT 1"))
        # Its error marked read from the start: should the round be cancelled before it reads
        # it (its loop closing), asyncio would report the query's ConnectionDoesNotExistError
        # (the terminate's) as never retrieved.
        query.add_done_callback(_retrieved)
        try:
            # On the loop's own time (``common.looptime``): the work shares the loop, and a
            # long synchronous step of it (before the query goes out, or while its answer
            # comes) is no time Postgres failed to answer in; the answer that came meanwhile is
            # read before the verdict, on asyncio's loop as on uvloop. A wait, not the query
            # itself: the bound run out cancels the wait, never the query (below).
            with contextlib.suppress(TimeoutError):
                await within_loop_time(asyncio.wait({query}), self._answer_within)
        finally:
            if not query.done():
                # Terminated, not cancelled: asyncpg's cancel of a query sends its
                # cancel request on a new connection, which a frozen server never answers.
                self._conn.terminate()
                query.cancel()
        if not query.done() or query.cancelled():
            return f"no answer to a probe within {self._answer_within:g} s"
        failure = query.exception()
        if failure is None or isinstance(failure, postgresconnect.STATEMENT_CANCELLED_ERRORS):
            # A cancel (an operator's pg_cancel_backend of the probe's backend) is Postgres
            # answering; the session lives on and the next round asks again.
            return None
        return f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__

    def _found_gone(self, why: str) -> None:
        self.gone = why
        self._conn.terminate()

    async def lost(self) -> str | None:
        """Why Postgres counts as gone: the watch's finding, else the answer to the probe in
        flight, or to one asked now (each within ``answer_within``). For a work that failed:
        after a restart its connections may fail with any error (asyncpg's InternalClientError,
        as the server's unsolicited FATAL meets the next query), which this tells from a bug."""
        if self.gone is not None or self._task.done():
            return self.gone
        in_flight = self._round
        # Cancelled only while it sleeps or waits on its round (shielded: the round goes on).
        self._task.cancel()
        await asyncio.wait({self._task})
        gone = await (in_flight if in_flight is not None else self._ask())
        if gone is not None:
            self._found_gone(gone)
        return self.gone

    async def stop(self) -> None:
        """End the probe and drop its connection (no round trip: the server may be frozen)."""
        self._task.cancel()
        try:
            # Not ``await self._task``: that would swallow a cancellation of this stop (the
            # caller's, a second Ctrl-C) as the probe's own.
            await asyncio.wait({self._task})
        finally:
            self._conn.terminate()
            if self._round is not None:
                # The round in flight (shielded from the probe's cancel) ends too before stop
                # returns, rather than be cancelled by the loop's close (a command's exit),
                # whatever it raised then unread. Soon: the terminate ends its query, and its
                # wait is bounded anyway (``answer_within`` of loop time). A wait, not an
                # await: a cancelled stop does not cancel the round.
                await asyncio.wait({self._round})


def _retrieved(query: asyncio.Future[object]) -> None:
    """Marks the query's error as read. ``_ask`` reads it too, unless ``_ask`` was cancelled
    before it could: a safeguard, as ``stop`` waits for the round to end."""
    if not query.cancelled():
        query.exception()


async def start(
    database_url: str,
    on_gone: Callable[[], None],
    answer_within: float = ANSWER_WITHIN,
    every: float = PROBE_EVERY,
) -> LivenessWatch:
    """Connect the probe (bounded as a command's connects are) and start it."""
    conn = await database.connect_or_unreachable(
        database_url,
        timeout=CHECK_CONNECT_SECONDS,
        # Idle between two probes: a server-wide idle_session_timeout must not end it.
        server_settings=WORK_SESSION_SETTINGS,
    )
    return LivenessWatch(conn, on_gone, answer_within, every)


class WorkWatch:
    """The probe of one piece of work that opens its own connections first: ``start`` it once
    they are, ask ``why_failed`` when the work fails, ``stop`` it when the work ends (whether
    or not it was started)."""

    def __init__(self, database_url: str, answer_within: float = ANSWER_WITHIN) -> None:
        self._database_url = database_url
        self._answer_within = answer_within
        self._watch: LivenessWatch | None = None

    async def start(self, on_gone: Callable[[], None]) -> None:
        """Connect the probe (``start``); ``on_gone`` ends the work's connections."""
        self._watch = await start(self._database_url, on_gone, self._answer_within)

    async def why_failed(self, failure: BaseException, in_chain: bool = True) -> str | None:
        """Why the work that raised ``failure`` met Postgres gone: the probe's finding
        (``LivenessWatch.lost``), else (``in_chain``) a connection of the work's ended under
        it, Postgres answering (``postgresconnect.went_away_error``: its backend terminated).
        None: it failed for something else."""
        gone = await self._watch.lost() if self._watch is not None else None
        if gone is None and in_chain:
            went = postgresconnect.went_away_error(failure)
            if went is not None:
                gone = f"{type(went).__name__}: {went}" if str(went) else type(went).__name__
        return gone

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
