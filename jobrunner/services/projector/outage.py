"""How the projector waits out an outage (Postgres restarting, NATS away): the same thing is
tried again after a growing pause, cut short by a stop.

At its start it waits for Postgres the same way (``until_postgres_answers``): a projector started
before Postgres (compose, k8s: any order), or while it restarts, fails over or is frozen, waits
with one line per outage instead of exiting with a traceback and being restarted in a loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time

import asyncpg
import structlog

from jobrunner.common import database, postgresconnect, stopping
from jobrunner.common.logging import LogThrottle
from jobrunner.common.postgresconnect import server_of

log = structlog.get_logger()

RETRY_PAUSE_MAX = 5.0  # seconds, at most, before what met an outage is tried again
# One connect's bound while the projector waits for Postgres at its start: a frozen Postgres
# (the kernel still accepts the connection, nothing answers the startup message) held the
# start for asyncpg's default 60 s, then ended it. A working Postgres answers a connect in
# milliseconds, a loaded one in a second or two.
CONNECT_SECONDS = 10.0
# While a batch waits out an outage, at most one line per this long after the first.
RETRY_LOG_SECONDS = 60.0
WHAT_TO_DO = (
    "start Postgres (or wait for its restart), or check database_url; the projector applies the "
    "events stored meanwhile once it answers"
)
# SQLSTATE 53100 (disk_full): Postgres answers, but cannot write; starting it, or another
# database_url, does not help, space where it keeps its data does. Its message names the file,
# relative to its data directory ("base/16384/16397", a tablespace's "pg_tblspc/<oid>/...").
DISK_FULL = "53100"
_NAMED_FILE = re.compile(r'file "([^"]+)"')
_TABLESPACE_FILE = re.compile(r"pg_tblspc/([0-9]+)/")
DISK_FULL_THEN = "; the projector applies the events stored meanwhile once Postgres can write again"
# The rest of class 53 (out of memory, configuration limits): Postgres answers, short of them.
WHAT_TO_DO_ON_SHORT_RESOURCES = (
    "give Postgres what the error names (memory, or the setting it names: max_connections, "
    "max_locks_per_transaction); the projector applies the events stored meanwhile once it can"
)
WAITING_EVENT = "projector waits for Postgres"
BACK_EVENT = "Postgres answers: projector goes on"


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", None) == DISK_FULL


def _named_file(exc: BaseException) -> str | None:
    found = _NAMED_FILE.search(str(exc))
    return found[1] if found else None


async def full_directory(pool: asyncpg.Pool, exc: BaseException) -> str | None:
    """Where a Postgres whose disk is full (``exc``) could not write, as Postgres tells it: the
    location of the tablespace of the file the error names, else its data directory; None when
    it does not tell (``data_directory`` is shown to superusers and pg_read_all_settings only)
    or does not answer. Asked on the pool's connections, which give up on a silent server."""
    named = _named_file(exc) or ""
    if named.startswith("/"):
        return os.path.dirname(named)
    tablespace = _TABLESPACE_FILE.match(named)
    try:
        async with pool.acquire() as conn:
            if tablespace is not None:
                where = await conn.fetchval(
                    "SELECT pg_tablespace_location($1::oid)", int(tablespace[1])
                )
            else:
                where = await conn.fetchval("SHOW data_directory")
    except Exception:  # only to say where: the advice without it still says what to free
        return None
    return str(where) if where else None


def what_to_do(exc: BaseException, directory: str | None = None) -> str:
    """What an operator should do about ``exc``, which stopped the projector applying events: a
    Postgres out of disk space (in ``directory``, when known: ``full_directory``) or other
    resources answered (class 53), anything else is Postgres away or refusing (``WHAT_TO_DO``)."""
    if disk_full(exc):
        return _free_space(_named_file(exc), directory) + DISK_FULL_THEN
    sqlstate = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    # 53300 (too many connections) is a connect's, and passes as the other clients leave.
    if isinstance(sqlstate, str) and sqlstate.startswith("53") and sqlstate != "53300":
        return WHAT_TO_DO_ON_SHORT_RESOURCES
    return WHAT_TO_DO


def _free_space(named: str | None, directory: str | None) -> str:
    """Where to free space: ``directory`` when Postgres told it, else how to ask it."""
    failed = f" (it could not write {named})" if named else ""
    if directory is not None:
        return f"Postgres's disk is full: free space on the filesystem of {directory}{failed}"
    tablespace = _TABLESPACE_FILE.match(named or "")
    if tablespace is not None:
        oid = tablespace[1]
        return (
            f"Postgres's disk is full: free space on the filesystem of tablespace {oid} "
            f"(SELECT pg_tablespace_location({oid}) tells its directory){failed}"
        )
    return (
        "Postgres's disk is full: free space on the filesystem of its data directory (SHOW "
        f"data_directory, as a superuser, tells it; the file is relative to it){failed}"
    )


def pause_after(failures: int) -> float:
    """The pause after ``failures`` failures in a row: 0.2 s, doubling, at most RETRY_PAUSE_MAX."""
    return min(0.1 * 2.0**failures, RETRY_PAUSE_MAX)


class RetryLog:
    """The log of one thing tried again until it goes through (a batch, the start's checkpoint
    read, a rebuild): its first failure said at once, then at most one line per ``interval``
    for each ``kind`` of failure (``since_last``: the failures left out; a new kind is news, not
    a repeat), and one line when an attempt succeeds after failures (``attempts``,
    ``waited_seconds``). A long outage wrote a line per attempt, every 5 s."""

    def __init__(self, interval: float = RETRY_LOG_SECONDS) -> None:
        self.interval = interval
        self.failures = 0
        self._began = time.monotonic()
        self._throttles: dict[str, LogThrottle] = {}
        self._said_once: set[str] = set()

    def once(self, what: str) -> bool:
        """True the first time ``what`` is asked about, False after: for what the first attempt
        that gets that far says (an attempt that failed before it said nothing)."""
        first = what not in self._said_once
        self._said_once.add(what)
        return first

    def failed(
        self, event: str, *, kind: str = "", throttled: bool = True, **fields: object
    ) -> float:
        """Count a failure and say it (an error, with ``attempt`` and ``retry_in``) unless it
        repeats a ``kind`` said within ``interval``; returns the pause before the next attempt.
        ``throttled=False``: said whatever came before."""
        self.failures += 1
        pause = pause_after(self.failures)
        left_out = (
            self._throttles.setdefault(kind, LogThrottle(self.interval)).admit() if throttled else 0
        )
        if left_out is not None:
            log.error(
                event,
                attempt=self.failures,
                retry_in=pause,
                **fields,
                **({"since_last": left_out} if left_out else {}),
            )
        return pause

    def said(self, event: str, *, kind: str, **fields: object) -> None:
        """Say ``event`` (a warning) met during an attempt (a NATS error of its connection),
        counting no failure: at most once per ``interval`` for each ``kind`` across attempts
        (``since_last``). Each attempt's new connection had a throttle of its own."""
        left_out = self._throttles.setdefault(kind, LogThrottle(self.interval)).admit()
        if left_out is not None:
            log.warning(event, **fields, **({"since_last": left_out} if left_out else {}))

    def succeeded(self, event: str, **fields: object) -> None:
        """Say ``event`` (info) when the attempt that went through followed failures."""
        if self.failures:
            log.info(
                event,
                attempts=self.failures + 1,
                waited_seconds=round(time.monotonic() - self._began, 1),
                **fields,
            )


async def wait_or_stop(stop: asyncio.Event, pause: float) -> bool:
    """Wait ``pause`` seconds or until ``stop``; returns whether stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), pause)
    return stop.is_set()


async def until_postgres_answers(database_url: str, stop: asyncio.Event) -> bool:
    """Connect (each try within ``CONNECT_SECONDS``) until Postgres answers: True then, False
    once ``stop`` is set first. Says so once when the first try fails (where, why, what to do)
    and once when Postgres answers again (after how long, how many tries). A refusal (wrong
    password, no such database: ``postgresconnect.REFUSING_CONNECT_ERRORS``) is raised: the
    start ends with it rather than waiting on a configuration that never works."""
    began = time.monotonic()
    failures = 0
    while not stop.is_set():
        try:
            conn = await stopping.unless_stopped(
                asyncpg.connect(database_url, timeout=CONNECT_SECONDS), stop
            )
        except postgresconnect.PASSING_CONNECT_ERRORS as exc:
            failures += 1
            pause = pause_after(failures)
            if failures == 1:
                log.warning(
                    WAITING_EVENT,
                    postgres=server_of(database_url),
                    error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                    retry_every_seconds=RETRY_PAUSE_MAX,
                    what_to_do=WHAT_TO_DO,
                )
            if await wait_or_stop(stop, pause):
                return False
            continue
        if conn is None:
            return False  # stopped during the try
        await database.close_connection(conn)
        if failures:
            log.info(
                BACK_EVENT,
                postgres=server_of(database_url),
                attempts=failures + 1,
                waited_seconds=round(time.monotonic() - began, 1),
            )
        return True
    return False
