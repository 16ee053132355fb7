"""A Postgres connection that times its statements, so that a statement Postgres cancelled is
told as its ``statement_timeout``'s or an operator's whatever language the server speaks.

Postgres cancels a statement past its session's ``statement_timeout`` and at an operator's
``pg_cancel_backend`` with the same SQLSTATE (57014) and fields; only its message differs, in the
session's ``lc_messages`` (postgresconnect.py). Where that message is not Postgres's English, the
caller's own facts decide: a statement its timeout cancelled ran at least that long. So each
statement is timed, and of one cancelled with a message of another language the session's
``statement_timeout`` is asked on the same connection, right after, and both are recorded on the
error (``postgresconnect.record_run``) for ``postgresconnect.statement_timed_out``.

Asked after the cancel rather than once at connect: no round trip per new connection (the
English message, where the server speaks it, needs none at all), and the answer is the session's
timeout as it is now, after any reload of the server's configuration since the connect (a value
set in postgresql.conf reaches live sessions), not as it was. The read pool's sessions change
none of their settings themselves. When asking fails (a statement inside a transaction that the
cancel aborted; Postgres gone meanwhile), the timeout is not known, and the cancel is told as an
operator's, as every cancel in another language was before.

Only the statements run through ``execute``, ``fetch``, ``fetchrow`` and ``fetchval`` are timed:
the ones the API's reads use. A cancel elsewhere (a cursor, ``copy_*``) records nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import asyncpg

from jobrunner.common import postgresconnect

T = TypeVar("T")

# The session's statement_timeout in seconds: pg_settings gives it in milliseconds, unit-free
# (SHOW and current_setting give "300ms", "5s", "1min").
STATEMENT_TIMEOUT_QUERY = (
    "SELECT setting::float8 / 1000 FROM pg_settings WHERE name = 'statement_timeout'"
)


class TimedConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg's connection whose statements, cancelled by Postgres, carry how long they ran
    and the session's statement_timeout (a pool's ``connection_class``)."""

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(super().execute(query, *args, **kwargs))

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(super().fetch(query, *args, **kwargs))

    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(super().fetchrow(query, *args, **kwargs))

    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed(super().fetchval(query, *args, **kwargs))

    async def _timed(self, statement: Awaitable[T]) -> T:
        # The clock starts before the statement is sent (awaiting it sends it), so it covers
        # all the time Postgres's timer can have run.
        began = time.monotonic()
        try:
            return await statement
        except asyncpg.QueryCanceledError as exc:
            ran = time.monotonic() - began
            if postgresconnect.said_timed_out(exc) is None:
                timeout = await self._statement_timeout()
                postgresconnect.record_run(exc, postgresconnect.StatementRun(ran, timeout))
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
