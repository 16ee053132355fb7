"""A Postgres connection that times its calls, so that a statement Postgres cancelled is told as
its ``statement_timeout``'s or an operator's whatever language the server speaks.

Postgres cancels a statement past its session's ``statement_timeout`` and at an operator's
``pg_cancel_backend`` with the same SQLSTATE (57014) and fields; only its message differs, in the
session's ``lc_messages`` (postgresconnect.py). Where that message is not Postgres's English, the
caller's own facts decide: a statement its timeout cancelled ran at least that long. So each call
of one statement is timed, and of one cancelled with a message of another language the session's
``statement_timeout`` is asked on the same connection, right after, and both are recorded on the
error (``postgresconnect.record_run``) for ``postgresconnect.statement_timed_out``.

Asked after the cancel: the answer is the session's timeout as it is now, after any reload of the
server's configuration since the connect (a value set in postgresql.conf reaches live sessions),
not as it was; the English message, where the server speaks it, needs no question at all. But a
cancel inside a transaction aborts it, and the question then fails: so the read pool's
connections also learn the timeout when they are opened (``init_connection``), and each answer
after a cancel renews it; when the question fails, the last one known is used, and the
connection asks again before its next statement outside a transaction (a ``BEGIN`` included):
a reload since it last asked (the server's timeout lowered, say) may have made the known one
stale, so that cancel may be told by a stale value, the next ones not. The read pool's sessions
change none of their settings themselves (and the API's reads run no transactions: each is one
statement, so it always asks). Not known at all (a connection that never learnt it, its first
cancel inside a transaction; Postgres gone meanwhile): the cancel is told as an operator's, as
every cancel in another language was before.

Timed per call, not per statement: Postgres applies the timeout to each statement of a call of
several (a query string with ``;`` in it), so such a call's time says nothing of its cancelled
statement's, and nothing is recorded for it (an operator's cancel, if not said in English). Only
the calls of ``execute``, ``fetch``, ``fetchrow`` and ``fetchval`` are timed: the ones the API's
reads use. A cancel elsewhere (a cursor, ``copy_*``) records nothing either.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg

from jobrunner.common import database, postgresconnect

T = TypeVar("T")

# The session's statement_timeout in seconds: pg_settings gives it in milliseconds, unit-free
# (SHOW and current_setting give "300ms", "5s", "1min").
STATEMENT_TIMEOUT_QUERY = (
    "SELECT setting::float8 / 1000 FROM pg_settings WHERE name = 'statement_timeout'"
)


class TimedConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg's connection whose statements, cancelled by Postgres, carry how long they ran
    and the session's statement_timeout (a pool's ``connection_class``)."""

    # The session's statement_timeout as last learnt (seconds, 0: none; None: never learnt).
    known_statement_timeout: float | None = None
    # Whether it is to be asked again before the next statement outside a transaction: a
    # cancel could not ask it (inside a transaction), and a reload may have changed it.
    statement_timeout_stale: bool = False

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(query, super().execute(query, *args, **kwargs))

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(query, super().fetch(query, *args, **kwargs))

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(query, super().fetchrow(query, *args, **kwargs))

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(query, super().fetchval(query, *args, **kwargs))

    async def learn_statement_timeout(self) -> None:
        """Ask the session's statement_timeout now, for a cancel inside a transaction, where it
        cannot be asked (``init_connection``). Its errors are the caller's: a connection being
        opened."""
        seconds = await asyncpg.Connection.fetchval(self, STATEMENT_TIMEOUT_QUERY)
        self.known_statement_timeout = float(seconds)

    async def _timed(self, query: str, statement: Coroutine[Any, Any, T]) -> T:
        if self.statement_timeout_stale and not self.is_in_transaction():
            try:
                asked = await self._statement_timeout()
            except BaseException:  # cancelled: the statement is not sent at all
                statement.close()
                raise
            # Only an answer clears it: a question that failed (cancelled, the connection
            # lost) leaves the known value as stale as it was, to be asked again next time.
            if asked is not None:
                self.known_statement_timeout = asked
                self.statement_timeout_stale = False
        if _several_statements(query):
            return await statement
        # The clock starts before the statement is sent (awaiting it sends it), so it covers
        # all the time Postgres's timer can have run, as the server's wall clock counts it but
        # for the slew that StatementRun.reached_timeout's margin allows.
        began = time.monotonic()
        try:
            return await statement
        except asyncpg.QueryCanceledError as exc:
            ran = time.monotonic() - began
            if postgresconnect.said_timed_out(exc) is None:
                asked = await self._statement_timeout()
                if asked is not None:
                    self.known_statement_timeout = asked
                    self.statement_timeout_stale = False
                else:
                    self.statement_timeout_stale = True
                postgresconnect.record_run(
                    exc, postgresconnect.StatementRun(ran, self.known_statement_timeout)
                )
            raise

    async def _statement_timeout(self) -> float | None:
        """The session's statement_timeout in seconds (0: none), or None when it cannot be
        asked (the caller's error stands, not this one's)."""
        try:
            seconds = await asyncpg.Connection.fetchval(self, STATEMENT_TIMEOUT_QUERY)
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ):
            return None
        return float(seconds) if seconds is not None else None


def _several_statements(query: str) -> bool:
    """Whether ``query`` may hold more than one statement: a ``;`` before its end (one inside a
    string literal too, which is then told as an operator's cancel, the answer that blames no
    setting)."""
    return ";" in query.rstrip().rstrip(";")


async def init_connection(conn: asyncpg.Connection) -> None:
    """The read pool's set-up of a new connection: the common one, and its session's
    statement_timeout learnt (``TimedConnection.learn_statement_timeout``)."""
    await database.init_connection(conn)
    if isinstance(conn, TimedConnection):
        await conn.learn_statement_timeout()
