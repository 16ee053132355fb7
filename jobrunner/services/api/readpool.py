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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg


class ReadModelsTimeout(Exception):
    """A read of the read models did not finish within its deadline (Postgres frozen, or
    overloaded): waiting for a connection and the query together."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer from Postgres within {seconds:g} s")
        self.seconds = seconds


class ReadPool:
    """asyncpg's pool for reads, with a deadline over acquire + query + release."""

    def __init__(self, pool: asyncpg.Pool, deadline_seconds: float) -> None:
        self.pool = pool
        self.deadline_seconds = deadline_seconds

    @asynccontextmanager
    async def acquire(self, deadline_seconds: float | None = None) -> AsyncIterator[Any]:
        """A connection for the block; the block's queries and the connection's return share
        the deadline (``deadline_seconds``, else the pool's). Past it: ReadModelsTimeout."""
        seconds = deadline_seconds or self.deadline_seconds
        deadline = asyncio.timeout(seconds)
        conn: Any = None
        try:
            async with deadline:
                conn = await self.pool.acquire()
                try:
                    yield conn
                except Exception:
                    # The query failed but the server answered: the connection goes back.
                    await self.pool.release(conn)
                    conn = None
                    raise
                await self.pool.release(conn)
                conn = None
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the block's own timeout, not ours
            raise ReadModelsTimeout(seconds) from exc
        finally:
            if conn is not None:
                # Past the deadline, or the caller cancelled (a client gone) mid-read:
                # terminated, which hands it back to the pool at once (asyncpg's cancel and
                # release would wait on the server); the pool opens a fresh one when needed.
                conn.terminate()

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

    async def close(self) -> None:
        await self.pool.close()
