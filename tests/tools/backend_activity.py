"""What Postgres's other sessions are doing, as pg_stat_activity shows it: looked at, and waited
for, by tests that hold a lock and wait until a read or a write of the code under test waits
on it (or runs a given statement).

Within a transaction Postgres shows pg_stat_activity as it was at the transaction's first look
at it (its backends, their state and query text; only the wait events are read live), until
``pg_stat_clear_snapshot()``: a test polling on the connection that held its lock in an open
transaction, its first look made before the read reached Postgres, never saw the read and ran
out its bound (test_api_read_cancelled, b3126bb). Every look here clears that snapshot first, so
any connection serves, in a transaction or not. pg_locks needs no such care: Postgres copies
the lock manager's state at each look."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg


async def backends(
    conn: asyncpg.Connection,
    *,
    query_like: str | None = None,
    waiting_on_a_lock: bool = False,
    active: bool = False,
    pid: int | None = None,
) -> list[int]:
    """The pids of the backends other than ``conn``'s that, now: run or last ran a query
    ``LIKE query_like``, wait on a heavyweight lock, run a statement (``active``), are ``pid``
    (each only when asked)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    # This database's only: the test servers hold other tests' databases too.
    conditions = ["pid <> pg_backend_pid()", "datname = current_database()"]
    args: list[Any] = []
    if query_like is not None:
        args.append(query_like)
        conditions.append(f"query LIKE ${len(args)}")
    if pid is not None:
        args.append(pid)
        conditions.append(f"pid = ${len(args)}")
    if waiting_on_a_lock:
        conditions.append("wait_event_type = 'Lock'")
    if active:
        conditions.append("state = 'active'")
    rows = await conn.fetch(
        f"SELECT pid FROM pg_stat_activity WHERE {' AND '.join(conditions)} ORDER BY pid", *args
    )
    return [row["pid"] for row in rows]


async def until_backends(
    conn: asyncpg.Connection,
    *,
    unless_ended: asyncio.Future[Any] | None = None,
    timeout: float = 30.0,
    **criteria: Any,
) -> list[int]:
    """Until some backend matches ``criteria`` (``backends``' keywords): their pids.
    ``unless_ended``, the work that should come to match, ending first fails at once with what
    it returned or raised."""
    async with asyncio.timeout(timeout):  # a bound on a broken test only
        while not (pids := await backends(conn, **criteria)):
            if unless_ended is not None and unless_ended.done():
                raise AssertionError(
                    f"it ended before a backend matched: {unless_ended.result()!r}"
                )
            await asyncio.sleep(0.02)  # Postgres's state: nothing to wait on
    return pids


async def until_no_backends(
    conn: asyncpg.Connection, *, timeout: float = 60.0, **criteria: Any
) -> None:
    """Until no backend matches ``criteria`` (``backends``' keywords): a query gone, a wait
    ended."""
    async with asyncio.timeout(timeout):  # a bound on a broken test only
        while await backends(conn, **criteria):  # noqa: ASYNC110 - Postgres's state
            await asyncio.sleep(0.02)  # Postgres's state: nothing to wait on
