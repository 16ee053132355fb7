"""One replay (or read-model rebuild) at a time: ``REPLAY_LOCK``, a Postgres session lock held
on a connection of its own, and the swap's transaction on that same connection.

The swap used to run on a pooled connection after a check that the holder's session still held
the lock: between the check and the commit the holder could end (an idle or TCP timeout, a
restart, ``pg_terminate_backend``) and a second replay take the lock and rebuild the schema being
swapped in. On the holder's own session that cannot happen: a transaction commits only while its
session lives, and a session lock goes only with its session (nothing here unlocks it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from jobrunner.common import database, postgreswatch, readmodelversion
from jobrunner.common.postgresconnect import CHECK_CONNECT_SECONDS
from jobrunner.services.projector import peerliveness, store, timestamps

# A session lock, held on a connection of its own for the whole replay (a pooled connection
# drops its session locks when it goes back to the pool).
# (Defined in common: the API reads whether it is held, an abandoned rebuild's sign.)
REPLAY_LOCK = readmodelversion.REBUILD_LOCK
assert REPLAY_LOCK == store.SWAP_LOCK + 1  # the value a rebuild of any version holds: never moved


# EX_TEMPFAIL: run it again once the other replay has finished.
REPLAY_RUNNING_EXIT = 75
# The lock's session ended before the swap: nothing was swapped.
REPLAY_LOCK_LOST_EXIT = 4


class ReplayRunning(Exception):
    """``REPLAY_LOCK`` is held by another session: another replay (or a projector's rebuild) is
    at work, or the backend of one whose client went away has yet to notice."""

    def __init__(self) -> None:
        super().__init__(
            "REPLAY_RUNNING: another replay is running (a session holds the replay lock); "
            "wait for it to finish, then run `jobrunner replay` again"
        )


class ReplayLockLost(RuntimeError):
    """The session holding the replay lock ended before the swap (an idle or TCP timeout, a
    Postgres restart, ``pg_terminate_backend``): another replay may have taken the lock and
    rebuilt the schema meanwhile, so nothing was swapped."""

    def __init__(self) -> None:
        super().__init__(
            "REPLAY_LOCK_LOST: the Postgres session holding the replay lock ended before the "
            "swap (another replay may have used the rebuilt tables meanwhile); nothing was "
            "swapped. Wait for any other replay to finish, then run `jobrunner replay` again."
        )


async def connect_lock_holder(database_url: str, dead_after: float) -> asyncpg.Connection:
    """The connection that takes ``REPLAY_LOCK`` and later runs the swap: set up as the load's
    pooled connections are (the swap applies the last events and compares rows with them), and
    idle for most of the replay, so a server-wide ``idle_session_timeout`` must not end it.

    Its backend gives up a client that has acknowledged nothing for ``dead_after`` seconds
    (``projector_postgres_dead_seconds``; peerliveness.py): a rebuilder whose host vanished
    would otherwise keep the lock, and the rebuild from every other projector, for Postgres'
    own keepalive default (about 2 h). The client side gets the same bound: a rebuilder cut
    off from Postgres learns it lost the lock instead of waiting for the swap's answer."""
    # Bounded (a frozen Postgres: asyncpg's own 60 s), and a socket's error is Postgres' (a
    # command says it as its start's check does: cli.py).
    conn = await postgreswatch.connect_work(
        database_url,
        timeout=CHECK_CONNECT_SECONDS,
        server_settings={
            # Exempt from a server's statement_timeout and idle_session_timeout.
            **postgreswatch.WORK_SESSION_SETTINGS,
            **peerliveness.server_settings(dead_after),
        },
    )
    peerliveness.watch_peer(conn, dead_after)
    try:
        await timestamps.init_connection(conn)
    except BaseException:
        await database.close_connection(conn)
        raise
    return conn


@dataclass
class SwapState:
    """How far a swap got, for what a failure may say of the live read models: before its
    COMMIT was sent nothing was swapped; once Postgres answered it, the swap is done; in
    between (the COMMIT sent, its connection lost before an answer: Postgres frozen past the
    probe's bound, restarted, the backend terminated) it may or may not have been stored."""

    committing: bool = False  # the COMMIT sent and not answered
    committed: bool = False  # the COMMIT answered: the rebuilt schema is the live one

    def consequence(self, previous_schema: str, dropped_by: str, next_step: str) -> str:
        """What a replay or rebuild that met Postgres gone left of the live read models
        (``dropped_by``: what drops ``previous_schema``; ``next_step``: what to do when the swap
        may not be done)."""
        if self.committed:
            return (
                "the rebuilt read models were swapped in; the previous ones are left in schema "
                f"{previous_schema} ({dropped_by} drops them)"
            )
        if self.committing:
            return (
                "the swap's COMMIT was sent and not answered, so the rebuilt read models may or "
                f"may not have been swapped in; {next_step}"
            )
        return f"nothing was swapped; {next_step}"


@contextlib.asynccontextmanager
async def swap_transaction(
    lock_holder: asyncpg.Connection, state: SwapState | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``lock_holder``, committed synchronously, that starts by checking the
    session holds ``REPLAY_LOCK`` (module docstring: it then holds it until the commit).

    The session found ended, at the start, within the transaction or as its COMMIT is due,
    raises ``ReplayLockLost``: nothing was swapped. A commit whose answer is lost with the
    session raises as it is: that commit may have been stored (``state.committing`` stays
    set)."""
    state = state or SwapState()
    transaction = lock_holder.transaction()
    try:
        await transaction.start()
        try:
            await lock_holder.execute("SET LOCAL synchronous_commit = on")
            if not await readmodelversion.rebuild_held(lock_holder, lock_holder.get_server_pid()):
                raise ReplayLockLost()
            yield lock_holder
        except BaseException:
            if not lock_holder.is_closed():
                await transaction.rollback()
            raise
    except ReplayLockLost:
        raise
    except Exception as exc:
        if lock_holder.is_closed():
            raise ReplayLockLost() from exc
        raise
    if lock_holder.is_closed():
        # Ended (a restart, pg_terminate_backend) before the COMMIT was sent: asyncpg sends
        # nothing on a closed connection, so nothing was swapped (it was said "may or may not").
        raise ReplayLockLost()
    state.committing = True
    try:
        await transaction.commit()
    except Exception:
        # Postgres answered the COMMIT with an error: rolled back, nothing swapped. Its
        # connection lost instead: the COMMIT may have been stored.
        state.committing = lock_holder.is_closed()
        raise
    state.committing = False
    state.committed = True


@contextlib.asynccontextmanager
async def rebuilt_schema_transaction(
    conn: asyncpg.Connection, lock_holder_pid: int
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on ``conn`` (a pooled one) for dropping and recreating the schema a replay
    or rebuild loads into, once any swap running has committed and only while the backend
    ``lock_holder_pid`` still holds ``REPLAY_LOCK`` (else ``ReplayLockLost``, nothing dropped).

    Postgres resolves ``DROP SCHEMA``'s name before it waits for the schema's tables: a drop
    queued behind another replay's swap would drop the schema that swap just renamed to the live
    one. The swap lock, shared (as the live projector takes it), waits for that swap instead,
    and keeps the next one from starting until this commits; the lock checked after it says
    whether that swap could have been another replay's."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", store.SWAP_LOCK)
        if not await readmodelversion.rebuild_held(conn, lock_holder_pid):
            raise ReplayLockLost()
        yield conn
