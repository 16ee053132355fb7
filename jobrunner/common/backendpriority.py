"""A niced service's Postgres backends at the service's niceness.

`jobrunner up` runs the projector at a lower CPU priority (``background_nice``), but its writes
are done by its Postgres backends, children of the postmaster at the postmaster's niceness: a
flood's projection took the cores beside the API at full priority all the same. When the server
runs on this host (the embedded one, or a local server whose backends this user may renice),
each of the pool's connections has its backend set to the service's niceness as it is set up.

Postgres makes each backend a session of its own (``setsid`` in ``InitPostmasterChild``), so with
autogroups (sched(7)) each backend is an autogroup of its own too, weighed against the API's and
the runner's by the autogroup's niceness: both the thread's and the autogroup's are set, as
``jobrunner up`` does for its services (``common.cpupriority``).

Only a backend shown to hold the far end of the connection's own socket is reniced
(``common.farend``): not the backend a local pooler (pgbouncer) lends us, which serves its other
clients next, nor another child of the postmaster, nor whatever process here has the number a
server in another pid namespace (a container) answers. A remote server, a pooler, a mismatch, a
process that is not a Postgres backend, or a refusal leaves the backend as it is: told once per
reason, harmless.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import structlog

from jobrunner.common.cpupriority import (
    AUTOGROUP_RETRY_SECONDS,
    autogroup_niceness,
    set_autogroup_niceness,
    set_thread_niceness,
)
from jobrunner.common.farend import why_not_far_end

log = structlog.get_logger()

AUTOGROUP_TRIES = 5

ConnectionInit = Callable[[asyncpg.Connection], Awaitable[None]]

# Each reason told once per process: every connection of a pool meets the same server.
_told: set[str] = set()


def _tell_once(reason: str, **details: object) -> None:
    if reason not in _told:
        _told.add(reason)
        log.info("postgres backend left at its priority", reason=reason, **details)


def is_local_backend(pid: int) -> bool:
    """A Postgres process on this host (a remote server's pid may be anything here)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


async def lower_priority(pid: int, niceness: int) -> bool:
    """Make ``pid`` at least ``niceness`` nice, in its thread and its autogroup (never raising
    either's priority); False when refused. The kernel takes one autogroup change per 100 ms,
    machine-wide: this waits its turn, a few times at most."""
    try:
        if os.getpriority(os.PRIO_PROCESS, pid) < niceness:
            set_thread_niceness(pid, niceness)
    except OSError as exc:  # EPERM (another user's server), ESRCH (the backend gone)
        _tell_once("refused", pid=pid, error=repr(exc))
        return False
    for _ in range(AUTOGROUP_TRIES):
        current = autogroup_niceness(pid)
        if current is None or current >= niceness or set_autogroup_niceness(pid, niceness):
            return True
        await asyncio.sleep(AUTOGROUP_RETRY_SECONDS)
    _tell_once("autogroup busy", pid=pid)
    return True


async def match_niceness(conn: asyncpg.Connection, niceness: int) -> bool:
    """Set ``conn``'s backend to ``niceness`` when it is shown to run on this host at the far end
    of ``conn``'s socket; True when it is."""
    # Qualified: a role's search_path could put a pg_backend_pid() of its own first.
    pid = await conn.fetchval("SELECT pg_catalog.pg_backend_pid()")
    # asyncpg has no public accessor for the socket; without it nothing shows where it leads.
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        _tell_once("no socket to check the connection by", pid=pid)
        return False
    try:
        # The check runs in a thread (a busy host's TCP table takes tens of milliseconds to
        # read): on a descriptor of its own, which the connection closing meanwhile cannot
        # hand to another socket.
        own = sock.dup()
    except OSError as exc:
        _tell_once("the socket cannot be checked", pid=pid, error=repr(exc))
        return False
    with own:
        why = await asyncio.to_thread(why_not_far_end, own, pid)
    if why is not None:
        _tell_once(why, pid=pid)
        return False
    if not is_local_backend(pid):
        _tell_once("not a postgres process", pid=pid)
        return False
    return await lower_priority(pid, niceness)


def at_own_niceness(init: ConnectionInit) -> ConnectionInit:
    """A pool's ``init``: ``init``, then the backend at this process's niceness (nothing more
    when this process is not niced)."""

    async def set_up(conn: asyncpg.Connection) -> None:
        await init(conn)
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        if niceness > 0:
            await match_niceness(conn, niceness)

    return set_up
