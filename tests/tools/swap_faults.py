"""Postgres faults at the swap of `jobrunner replay` or of a projector's rebuild, for real: its
backends terminated (``pg_terminate_backend``), only the swap's own session terminated, or the
server restarted (or only stopped), just
before the swap's COMMIT is sent or once it was answered. Each fault returns once the swap's own
connection has seen its end, so that the command's next step meets it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any

import asyncpg
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.projector.replaylock import SwapState
from tests.tools.postgres_processes import freeze_postgres, thaw
from tests.tools.rebuild_backends import terminate_backends_since
from tests.tools.replay_in_process import replay_in_process

# A fault, given the swap's connection (the replay lock's session) and how far the swap got.
SwapFault = Callable[[asyncpg.Connection, SwapState], Awaitable[None]]


def fault_at_swap(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, after_commit: bool, fault: SwapFault
) -> list[bool]:
    """``module``'s swap (its ``swap_transaction``) runs ``fault`` once its statements are done,
    its COMMIT next, or (``after_commit``) once the COMMIT was answered. The list returned gets
    an entry when the fault has come."""
    swap_transaction = module.swap_transaction
    came: list[bool] = []

    @contextlib.asynccontextmanager
    async def faulted(lock_holder: asyncpg.Connection, state: SwapState) -> AsyncIterator[Any]:
        async with swap_transaction(lock_holder, state) as conn:
            yield conn
            if not after_commit:
                await fault(lock_holder, state)
                came.append(True)
        if after_commit:
            await fault(lock_holder, state)
            came.append(True)

    monkeypatch.setattr(module, "swap_transaction", faulted)
    return came


async def server_now(database_url: str) -> object:
    """Postgres' clock now: backends started after it are the command's."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT now()")
    finally:
        await conn.close()


async def until_closed(conn: asyncpg.Connection) -> None:
    """Until the client has seen ``conn``'s end (the server's close read)."""
    async with asyncio.timeout(30):
        while not conn.is_closed():  # noqa: ASYNC110 - the socket's state
            await asyncio.sleep(0.01)


def backends_terminated(database_url: str, since: object) -> SwapFault:
    """Every client backend begun after ``since`` (the command's, its probe's included)
    terminated, each waited for."""

    async def fault(lock_holder: asyncpg.Connection, state: SwapState) -> None:
        terminated = await terminate_backends_since(database_url, since)
        assert terminated, "no backend of the command to terminate"
        await until_closed(lock_holder)

    return fault


def lock_holder_terminated(database_url: str) -> SwapFault:
    """Only the swap's own session (the replay lock's holder) terminated, as an operator ending
    one session does; the command's other connections, its probe's among them, live on."""

    async def fault(lock_holder: asyncpg.Connection, state: SwapState) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            ended = await conn.fetchval(
                "SELECT pg_terminate_backend($1, 10000)", lock_holder.get_server_pid()
            )
        finally:
            await conn.close()
        assert ended, "the lock holder's backend was not there to terminate"
        await until_closed(lock_holder)

    return fault


def server_restarted(
    server: EmbeddedPostgres, test_loop: asyncio.AbstractEventLoop, start_again: bool = True
) -> SwapFault:
    """``server`` stopped (a fast shutdown: its backends terminated) and, with ``start_again``,
    started again (on its port) before the command goes on. Run on ``test_loop``'s threads: the
    server dies with the thread that started it (its parent-death signal), and the command's
    own end with the command."""

    def restart() -> None:
        server.stop()
        if start_again:
            server.start()

    async def fault(lock_holder: asyncpg.Connection, state: SwapState) -> None:
        restarting = asyncio.to_thread(restart)
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(restarting, test_loop))
        await until_closed(lock_holder)

    return fault


# The faults ``connections_ended`` makes: the command's backends terminated; Postgres restarted;
# Postgres stopped (the test starts it again once the command has ended).
ENDINGS = ("backends-terminated", "restarted", "stopped")
# And only the swap's own session terminated (the command's probe lives on).
LOCK_HOLDER_TERMINATED = "lock-holder-terminated"


async def connections_ended(kind: str, database_url: str, server: EmbeddedPostgres) -> SwapFault:
    """The fault of ``ENDINGS`` that ``kind`` names, for a command started after this call."""
    if kind == LOCK_HOLDER_TERMINATED:
        return lock_holder_terminated(database_url)
    if kind == "backends-terminated":
        return backends_terminated(database_url, await server_now(database_url))
    loop = asyncio.get_running_loop()
    return server_restarted(server, loop, start_again=kind == "restarted")


class CommitCrash:
    """``server`` frozen before the swap's COMMIT is sent (``fault``), so that it is sent and
    never answered, then killed outright (a crash) and started again, on the test's loop, once
    the swap is committing: the COMMIT never reached a running backend."""

    def __init__(self, server: EmbeddedPostgres, test_loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._test_loop = test_loop
        self._crash: concurrent.futures.Future[None] | None = None
        self._frozen: list[int] = []

    async def fault(self, lock_holder: asyncpg.Connection, state: SwapState) -> None:
        assert self._crash is None, "a CommitCrash crashes the server once: fault() called twice"
        self._frozen = freeze_postgres(self._server)
        self._crash = asyncio.run_coroutine_threadsafe(
            self._once_committing(state), self._test_loop
        )

    async def _once_committing(self, state: SwapState) -> None:
        try:
            async with asyncio.timeout(60):
                while not state.committing:  # noqa: ASYNC110 - the command's state, another loop
                    await asyncio.sleep(0.01)
            await asyncio.to_thread(self._crash_and_start)
        except BaseException:
            # A server left frozen would hang the command and every later test of it, hiding
            # this error behind their timeouts.
            thaw(self._frozen)
            raise

    def _crash_and_start(self) -> None:
        self._server.kill()
        self._server.start()

    async def restarted(self) -> None:
        """Until the server is up again (at once: the fault never came); raises what went
        wrong in its crash or its start."""
        if self._crash is not None:
            async with asyncio.timeout(90):
                await asyncio.wrap_future(self._crash)


@contextlib.asynccontextmanager
async def killed_during_the_commit(server: EmbeddedPostgres) -> AsyncIterator[SwapFault]:
    """The fault of ``CommitCrash`` for a command run in the block; the block's end waits for
    the server's restart, and raises what went wrong in it, so that no error of it is lost and
    the test goes on with its server up."""
    crash = CommitCrash(server, asyncio.get_running_loop())
    try:
        yield crash.fault
    finally:
        await crash.restarted()


async def assert_refused_then_replays(
    outcome: tuple[int | None, str],
    exit_code: int,
    says: Sequence[str],
    live_as_it_was: Callable[[], Awaitable[None]],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    says_not: Sequence[str] = (),
) -> None:
    """The closing check of a `jobrunner replay` that a fault ended (``outcome``: its exit code
    and standard error): it ended, without a traceback, with ``exit_code`` and every sentence
    of ``says`` (none of ``says_not``); with the fault undone, ``live_as_it_was`` (asserts the
    live read models are as they were) and a replay run again succeeds."""
    code, err = outcome
    assert code is not None, "the replay hung:\n" + err
    assert "Traceback" not in err, err
    assert code == exit_code, err
    for sentence in says:
        assert sentence in err, err
    for sentence in says_not:
        assert sentence not in err, err
    monkeypatch.undo()
    await live_as_it_was()
    again, said = await replay_in_process(settings, monkeypatch, capsys)
    assert again == 0, said


async def replay_succeeding_past_connections_ended(
    kind: str,
    module: ModuleType,
    settings: Settings,
    server: EmbeddedPostgres,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """`jobrunner replay` whose swap (``module``'s: the replay's or the rebuild's) meets the
    fault of ``ENDINGS`` that ``kind`` names once its COMMIT was answered (a stopped server is
    started again once the command has ended): checked that it succeeded, exit 0, without a
    traceback or POSTGRES_UNAVAILABLE; what it said."""
    fault = await connections_ended(kind, settings.database_url, server)
    came = fault_at_swap(monkeypatch, module, after_commit=True, fault=fault)
    try:
        code, err = await replay_in_process(settings, monkeypatch, capsys)
    finally:
        if kind == "stopped":
            await asyncio.to_thread(server.start)
    assert came, "the swap never came: " + err
    assert "Traceback" not in err, err
    assert "POSTGRES_UNAVAILABLE" not in err, err
    assert code == 0, err
    return err
