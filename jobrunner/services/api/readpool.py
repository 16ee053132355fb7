"""The API's reads of the read models, each within one deadline (a frozen Postgres hangs none).

With Postgres frozen (SIGSTOPped, a hung disk) a query never returns, asyncpg's cancel of it
waits on the same frozen server, and the readers beyond the pool's connections queue on
``acquire()`` without bound: every request, ``GET /health`` too, hung until the thaw. So every
read goes through :meth:`ReadPool.acquire`: waiting for a connection, the query and handing the
connection back share one deadline (``api_read_timeout_seconds``). Past it the read raises
:class:`ReadModelsTimeout` (``503 READ_MODELS_TIMEOUT``, errors.py) and the connection it held
is terminated, not cancelled: the pool then opens a fresh one for the next reader instead of
keeping a wedged one, and reads work again on their own once Postgres answers.

The deadline is not a query timeout of asyncpg's (``command_timeout``): that one cancels, so
it waits on the frozen server, and it does not cover the wait for a connection. It must be long
enough for the slowest legitimate read (a search through a big log; bench/RESULTS.md, session
20), since a read past it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any

import asyncpg

from jobrunner.common import database, postgresconnect
from jobrunner.common.looptime import LoopTimeout


class ReadModelsTimeout(Exception):
    """A read of the read models did not finish within its deadline (Postgres frozen, or
    overloaded): waiting for a connection and the query together."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer from Postgres within {seconds:g} s")
        self.seconds = seconds


class ReadModelsNotRead(Exception):
    """A live stream did not read the read models (streamlookups.py): a read of its failed just
    now, or their version is not known to be this one. Outside a stream: ``503
    READ_MODELS_UNAVAILABLE`` with the exception's own sentence, which says which (errors.py)."""


class ReadModelsOfAnotherVersion(Exception):
    """A live stream's read refused because the API knows the stored read models are not this
    version (a newer jobrunner's, or a rebuild under way): no read of the stream's can succeed
    until this API is upgraded or the rebuild ends, so the stream ends (job_updates.py) rather
    than wait with keep-alives for ever. ``code``, ``sentence``, ``details`` (what the gate
    tells of the versions) and ``retry_after_seconds`` are the gate's 503's (carried: the gate's
    module imports errors.py, whose handler answers this)."""

    def __init__(
        self,
        code: str,
        sentence: str,
        details: dict[str, Any] | None = None,
        retry_after_seconds: int = 5,
    ) -> None:
        super().__init__(sentence)
        self.code = code
        self.sentence = sentence
        self.details = details or {}
        self.retry_after_seconds = retry_after_seconds


class ReadModelsLost(Exception):
    """A read's connection died under it (its backend terminated, the socket reset), where
    asyncpg said so with a client-side error rather than ``ConnectionDoesNotExistError``:
    ``503 READ_MODELS_UNAVAILABLE`` as any Postgres away (errors.py), not a 500."""


# What asyncpg raises from a query whose connection died, besides its Postgres connection
# errors (which errors.py maps already). Checked against asyncpg 0.32 with pg_terminate_backend
# at several points of a read (tests/test_api_postgres_outage.py): the next query on a backend
# terminated while idle fails with InternalClientError ("cannot switch to state ...; another
# operation is in progress": the FATAL message came first, the socket's end not yet); one whose
# connection asyncpg has already closed and handed back fails with InterfaceError ("connection
# has been released" / "connection is closed"); and a release of a connection asyncpg freed
# itself raised InternalClientError ("called on a free connection holder").
LOST_SHAPES: tuple[type[BaseException], ...] = (
    asyncpg.InternalClientError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError among them
    # The backend's FATAL admin or crash shutdown, its database dropped, its idle session timed
    # out. Not a statement cancelled (QueryCanceledError: statement_timeout, pg_cancel_backend),
    # whose connection lives on and goes back to the pool.
    *postgresconnect.SESSION_ENDED_ERRORS,
    OSError,
)


# asyncpg's own "the session is gone" errors, already a 503 (errors.POSTGRES_AWAY): raised as
# they are.
POSTGRES_CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    *postgresconnect.SESSION_ENDED_ERRORS,
)


def _lost(conn: Any) -> bool:
    """Whether asyncpg has closed the connection (or already handed it back: detached)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True  # a detached proxy: asyncpg released it when it closed


def _drop(conn: Any) -> None:
    """A dead or untrustworthy connection back to the pool by terminating it (asyncpg then
    frees its holder, and the next reader gets a new one); nothing to do if already detached."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


# How long a read whose caller left (a client gone) waits for asyncpg's cancel of its query
# before the connection is terminated instead: a cancel is a round trip to Postgres (a new
# connection to the postmaster, the backend's answer), milliseconds when it answers; a frozen
# Postgres never answers it, and the caller must not wait out the read's whole deadline.
CANCEL_GRACE_SECONDS = 0.5


class Read:
    """One read: ``async with`` gives a connection, within one deadline (a class rather than a
    generator: the connection's state is explicit).

    How the connection goes back depends on how the block ended:
    - normally, or a query error (the server answered): released, within what is left of the
      deadline;
    - our deadline passed (Postgres frozen): terminated (asyncpg's cancel and release would wait
      on the frozen server), which hands it back to the pool at once; ReadModelsTimeout;
    - the caller cancelled before the deadline (a client gone): released, so asyncpg cancels
      the query and keeps the connection (Postgres answering, no new backend per departing
      viewer). The release is bounded by ``cancel_grace`` (``CANCEL_GRACE_SECONDS``, or what
      is left of the deadline if less): past it asyncpg terminates the connection (Postgres
      frozen) and the cancel goes on to the caller, which so waits at most the grace, not the
      rest of the deadline. The release is shielded by asyncpg: a second cancel returns at
      once while it goes on. Do not wrap a read in a timeout of the caller's own: its cancel
      waits the same way, and the read's own deadline already bounds it.
    The connection is forgotten before it is released: a cancel landing after the release
    never terminates a connection the pool may have handed to another reader.

    The read pool's connections (``timedconnection.TimedConnection``) time only their
    ``execute``, ``fetch``, ``fetchrow`` and ``fetchval`` calls of one statement: a statement
    Postgres cancels under a cursor or ``copy_*``, or in a call of several, is told as an
    operator's cancel on a server not speaking English (``errors.read_cancelled``).
    """

    __slots__ = ("_cancel_grace", "_conn", "_deadline", "_pool", "_seconds")

    def __init__(
        self,
        pool: asyncpg.Pool,
        seconds: float,
        cancel_grace: float = CANCEL_GRACE_SECONDS,
        on_loop_time: bool = False,
    ) -> None:
        self._pool = pool
        self._seconds = seconds
        self._cancel_grace = cancel_grace
        self._deadline: asyncio.Timeout | LoopTimeout = (
            LoopTimeout(seconds) if on_loop_time else asyncio.timeout(seconds)
        )
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        await self._deadline.__aenter__()
        try:
            self._conn = await self._pool.acquire()
        except BaseException as exc:
            await self._leave_deadline(exc)
            raise
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        # A client-side error or Postgres's "gone" on this connection: it is not trusted again.
        lost = isinstance(exc, LOST_SHAPES) and (
            isinstance(exc, (asyncpg.InternalClientError, *POSTGRES_CONNECTION_ERRORS))
            or _lost(conn)
        )
        try:
            if self._deadline.expired():
                conn.terminate()  # still ours: attached to its proxy
            elif lost:
                _drop(conn)  # no release: asyncpg may have freed it already, or will
            elif isinstance(exc, asyncio.CancelledError):
                # The caller left: asyncpg cancels the query and keeps the connection when
                # Postgres answers within the grace (a round trip); else asyncpg terminates it
                # (its release's own timeout) and the caller goes now, not at our deadline.
                grace = min(self._left(), self._cancel_grace)
                with contextlib.suppress(TimeoutError):
                    await self._pool.release(conn, timeout=grace)
            else:
                await self._pool.release(conn, timeout=self._left())
        except LOST_SHAPES as release_exc:
            if not _lost(conn):
                await self._leave_deadline(release_exc)
                raise
            _drop(conn)  # it died as it went back: the block's outcome stands
        except BaseException as release_exc:
            await self._leave_deadline(release_exc)
            raise
        await self._leave_deadline(exc)
        if lost and not isinstance(exc, POSTGRES_CONNECTION_ERRORS):
            raise ReadModelsLost(
                f"the read's connection to Postgres died under it ({type(exc).__name__}: {exc})"
            ) from exc

    def _left(self) -> float:
        # The time left until the deadline's latest end (``when``: for a LoopTimeout its
        # wall-time backstop, twice the bound). The caller is cancelled once the bound is spent
        # (1x, on the loop's own time); only asyncpg's release, which it shields from that
        # cancel, may run on, and this bounds it to the backstop (2x) at most.
        when = self._deadline.when()
        assert when is not None
        return max(0.0, when - asyncio.get_running_loop().time())

    async def _leave_deadline(self, exc: BaseException | None) -> None:
        """Close the deadline's scope; its expiry (CancelledError → TimeoutError) becomes
        ReadModelsTimeout, and so does a TimeoutError the block raised once the deadline had
        passed (code that turned our cancel into a timeout of its own); any other exception goes
        on as it was."""
        try:
            await self._deadline.__aexit__(
                type(exc) if exc else None, exc, exc.__traceback__ if exc else None
            )
        except TimeoutError as timeout:
            raise ReadModelsTimeout(self._seconds) from timeout
        if isinstance(exc, TimeoutError) and self._deadline.expired():
            raise ReadModelsTimeout(self._seconds) from exc


class ReadPool:
    """asyncpg's pool for reads, with a deadline over acquire + query + release; on the event
    loop's own time when ``on_loop_time`` (``common.looptime.LoopTimeout``: the loop blocked by
    other work while Postgres answered does not count against it), else on wall time."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        deadline_seconds: float,
        cancel_grace_seconds: float = CANCEL_GRACE_SECONDS,
        on_loop_time: bool = False,
    ) -> None:
        self.pool = pool
        self.deadline_seconds = deadline_seconds
        self.cancel_grace_seconds = cancel_grace_seconds
        self.on_loop_time = on_loop_time

    def acquire(self, deadline_seconds: float | None = None) -> Read:
        """A connection for the block; the block's queries and the connection's return share
        the deadline (``deadline_seconds``, else the pool's). Past it: ReadModelsTimeout."""
        return Read(
            self.pool,
            deadline_seconds or self.deadline_seconds,
            self.cancel_grace_seconds,
            self.on_loop_time,
        )

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(query, *args)
            return row

    async def fetchval(self, query: str, *args: Any, deadline_seconds: float | None = None) -> Any:
        async with self.acquire(deadline_seconds) as conn:
            return await conn.fetchval(query, *args)

    async def close(self, within: float | None = None) -> None:
        await database.close_pool(self.pool, within)
