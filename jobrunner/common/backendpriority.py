"""A niced service's Postgres backends at the service's niceness.

`jobrunner up` runs the projector at a lower CPU priority (``background_nice``), but its writes
are done by its Postgres backends, children of the postmaster at the postmaster's niceness: a
flood's projection took the cores beside the API at full priority all the same. When the server
runs on this host (the embedded one, or a local server whose backends this user may renice),
each of the pool's connections has its backend set to the service's niceness as it is set up.

With autogroups (sched(7)) a backend's own niceness counts only against the other processes of
the postmaster's session (the API's and notifier's backends, autovacuum, the checkpointer); the
postmaster's autogroup is shared by all of them and is left alone. A remote server, a process
that is not a Postgres backend, or a refusal leaves the backend as it is: told once, harmless.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import structlog

log = structlog.get_logger()

ConnectionInit = Callable[[asyncpg.Connection], Awaitable[None]]

# Told once per process: every connection of a pool meets the same server.
_told = False


def _tell_once(reason: str, **details: object) -> None:
    global _told
    if not _told:
        _told = True
        log.info("postgres backend left at its priority", reason=reason, **details)


def is_local_backend(pid: int) -> bool:
    """A Postgres process on this host (a remote server's pid may be anything here)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


def lower_priority(pid: int, niceness: int) -> bool:
    """Make ``pid`` at least ``niceness`` nice (never raise its priority); False when refused."""
    try:
        if os.getpriority(os.PRIO_PROCESS, pid) < niceness:
            os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except OSError as exc:  # EPERM (another user's server), ESRCH (the backend gone)
        _tell_once("refused", pid=pid, error=repr(exc))
        return False
    return True


async def match_niceness(conn: asyncpg.Connection, niceness: int) -> bool:
    """Set ``conn``'s backend to ``niceness`` when it runs on this host; True when it is."""
    pid, server_addr = await conn.fetchrow("SELECT pg_backend_pid(), inet_server_addr()")
    # No server address: a Unix socket, so this host. A loopback address may still be a tunnel
    # or a container's port: the pid must be a Postgres process here too.
    if server_addr is not None and not server_addr.is_loopback:
        _tell_once("remote server", server=str(server_addr))
        return False
    if not is_local_backend(pid):
        _tell_once("not a postgres process on this host", pid=pid)
        return False
    return lower_priority(pid, niceness)


def at_own_niceness(init: ConnectionInit) -> ConnectionInit:
    """A pool's ``init``: ``init``, then the backend at this process's niceness (nothing more
    when this process is not niced)."""

    async def set_up(conn: asyncpg.Connection) -> None:
        await init(conn)
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        if niceness > 0:
            await match_niceness(conn, niceness)

    return set_up
