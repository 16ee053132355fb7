"""A test's Postgres killed outright (``EmbeddedPostgres.kill``, as a crash would) starts again
at once, whatever its backends were doing: each backend leads a process group of its own, so a
kill of the postmaster's group alone left a backend busy with a long statement (the projector's
COPY of lines) running on, and the next start met its shared memory ("pre-existing shared
memory block ... is still in use": ``ServerStartError: postgres did not start``). The kill finds
the server's processes by that shared memory, also when the postmaster died first; signals them
through pidfds, never a pid that another process may have taken since; and names any process
still running at its bound."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobrunner.embedded import processtree
from jobrunner.embedded.postgres import EmbeddedPostgres, PostgresNotEnded
from jobrunner.embedded.serverprocess import ServerProcess
from tests.freeze import freeze
from tests.tools import freezer_cgroup, pid_taking
from tests.tools.backend_activity import until_backends

pytestmark = pytest.mark.timeout(120)

# Seconds of work for one backend, far longer than a kill and a start take.
LONG_STATEMENT = "SELECT count(*) FROM generate_series(1, 2000000000)"


async def backend_running(url: str, statement: str, working: asyncio.Future[Any]) -> int:
    """The pid of the backend running ``statement``, once it runs (fails at once if
    ``working``, the statement's own future, ended first)."""
    conn = await asyncpg.connect(url)
    try:
        [pid] = await until_backends(conn, query_like=statement, active=True, unless_ended=working)
        return pid
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def busy_backend(server: EmbeddedPostgres) -> AsyncIterator[int]:
    """A backend busy with a long statement (its pid): it notices nothing until it next waits."""
    busy = await asyncpg.connect(server.url)
    working = asyncio.create_task(busy.fetchval(LONG_STATEMENT))
    try:
        yield await backend_running(server.url, LONG_STATEMENT, working)
    finally:
        working.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await working
        busy.terminate()


async def answers(server: EmbeddedPostgres) -> bool:
    conn = await asyncpg.connect(server.url)
    try:
        return bool(await conn.fetchval("SELECT 1") == 1)
    finally:
        await conn.close()


def state_of(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


async def until_state(pid: int, wanted: str | None) -> None:
    async with asyncio.timeout(30):
        while state_of(pid) != wanted:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # /proc tells, nothing signals


async def test_postgres_killed_while_a_backend_is_busy_starts_again(
    own_postgres: EmbeddedPostgres,
) -> None:
    """Killed while a backend runs a long statement, Postgres starts again on the same data
    directory and answers."""
    async with busy_backend(own_postgres):
        await asyncio.to_thread(own_postgres.kill)
        await asyncio.to_thread(own_postgres.start)
        assert await answers(own_postgres)


async def test_postgres_whose_postmaster_died_alone_is_killed_and_starts_again(
    own_postgres: EmbeddedPostgres,
) -> None:
    """The postmaster killed on its own (as the OOM killer picks one process) while a backend
    runs a long statement: the kill still ends that backend, and Postgres starts again."""
    async with busy_backend(own_postgres):
        assert own_postgres.proc is not None
        os.kill(own_postgres.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(own_postgres.proc.wait)
        await asyncio.to_thread(own_postgres.kill)
        await asyncio.to_thread(own_postgres.start)
        assert await answers(own_postgres)


@pytest.mark.skipif(not pid_taking.available(), reason=pid_taking.WHY_NOT)
async def test_a_kill_leaves_alone_a_process_that_took_an_ended_backends_pid(
    own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend that ended while the server was stopped holds its pid only until the server
    dies; a process that takes the pid then lives on: the kill signals the server's processes
    only."""
    assert own_postgres.proc is not None
    conn = await asyncpg.connect(own_postgres.url)
    backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
    freeze(own_postgres.proc.pid)
    conn.terminate()
    await until_state(backend, "Z")  # ended; its stopped parent cannot reap it
    bystanders: list[subprocess.Popen[bytes]] = []
    kill_postmaster = ServerProcess.kill

    def then_the_pid_is_taken(server: ServerProcess) -> None:
        kill_postmaster(server)
        # The postmaster reaped, init adopts the ended backend and reaps it: the pid is free.
        deadline = time.monotonic() + 30
        while state_of(backend) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        if (bystander := pid_taking.started_at(backend, ["sleep", "600"])) is not None:
            bystanders.append(bystander)

    monkeypatch.setattr(ServerProcess, "kill", then_the_pid_is_taken)
    try:
        await asyncio.to_thread(own_postgres.kill)
        assert bystanders, f"no process could take the pid {backend}"
        assert bystanders[0].poll() is None, "the process at the ended backend's pid was killed"
    finally:
        for bystander in bystanders:
            bystander.kill()
            bystander.wait()


# The kill's bound in the tests of a backend that SIGKILL cannot end at once.
KILL_BOUND = 4.0


@pytest.mark.skipif(not freezer_cgroup.available(), reason=freezer_cgroup.WHY_NOT)
async def test_a_backend_stuck_past_the_kill_bound_is_named(
    own_postgres: EmbeddedPostgres,
) -> None:
    """A busy backend that SIGKILL cannot end within the kill's bound (held by the kernel, as
    a long disk wait holds it): the kill says which process still runs, instead of the next
    start failing on its shared memory; once it has ended, Postgres starts again."""
    async with busy_backend(own_postgres) as backend:
        with freezer_cgroup.frozen([backend]):
            with pytest.raises(PostgresNotEnded) as stuck:
                await asyncio.to_thread(own_postgres.kill, KILL_BOUND)
            assert stuck.value.pids == [backend]
            assert str(backend) in str(stuck.value)
        await asyncio.to_thread(own_postgres.kill)  # the thawed backend ends: waited for
        await asyncio.to_thread(own_postgres.start)
        assert await answers(own_postgres)


def began_killing(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set when the kill's bound begins: its first look for the server's processes."""
    began = threading.Event()
    kill_attached = processtree.kill_attached

    def noting(*args: Any, **kwargs: Any) -> Any:
        began.set()
        return kill_attached(*args, **kwargs)

    monkeypatch.setattr(processtree, "kill_attached", noting)
    return began


@pytest.mark.skipif(not freezer_cgroup.available(), reason=freezer_cgroup.WHY_NOT)
async def test_a_backend_stuck_just_shorter_than_the_kill_bound_is_waited_out(
    own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held for less than the kill's bound (0.7 of it, from when the bound began): the kill
    waits it out, and Postgres starts again."""
    killing_began = began_killing(monkeypatch)
    async with busy_backend(own_postgres) as backend:
        with freezer_cgroup.frozen([backend]) as fridge:
            killing = asyncio.create_task(asyncio.to_thread(own_postgres.kill, KILL_BOUND))
            assert await asyncio.to_thread(killing_began.wait, 30)
            await asyncio.sleep(KILL_BOUND * 0.7)  # the fault's length, from the bound's start
            assert not killing.done()
            fridge.thaw()
            await killing
        await asyncio.to_thread(own_postgres.start)
        assert await answers(own_postgres)


async def test_a_backend_the_first_look_missed_is_killed_too(
    own_postgres: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend the kill's first look at /proc did not see (a fork the postmaster was still
    making as it was stopped) is found by the next look and killed: Postgres starts again.
    (The fork itself cannot be timed from outside: the first look is made to miss it.)"""
    look = processtree.attached_to
    looks: list[list[int]] = []
    async with busy_backend(own_postgres) as backend:

        def first_misses_the_backend(segment: processtree.Segment) -> list[int]:
            looks.append(look(segment))
            return [pid for pid in looks[-1] if len(looks) > 1 or pid != backend]

        monkeypatch.setattr(processtree, "attached_to", first_misses_the_backend)
        await asyncio.to_thread(own_postgres.kill)
        assert backend in looks[0]  # it was there to miss
        await asyncio.to_thread(own_postgres.start)
        assert await answers(own_postgres)


@pytest.mark.skipif(not pid_taking.available(), reason=pid_taking.WHY_NOT)
async def test_postgres_starts_again_when_its_killed_postmasters_pid_was_taken(
    own_postgres: EmbeddedPostgres,
) -> None:
    """Killed, the postmaster leaves its lock files behind (postmaster.pid, its socket's);
    once a process of Postgres' user takes its pid, Postgres took them for a live server's and
    refused every start ("lock file ... already exists"). The kill removes the locks of the
    postmaster it reaped, and the start goes through."""
    assert own_postgres.proc is not None
    postmaster = own_postgres.proc.pid
    await asyncio.to_thread(own_postgres.kill)
    # Postgres' user's own process: one it may not signal (EPERM) it takes for no server.
    as_server_user = ["setpriv", f"--reuid={own_postgres.user}", "--init-groups"]
    bystander = pid_taking.started_at(
        postmaster, [*(as_server_user if own_postgres.user else []), "sleep", "600"]
    )
    assert bystander is not None, f"no process could take the pid {postmaster}"
    try:
        await asyncio.to_thread(own_postgres.start)
        assert await answers(own_postgres)
    finally:
        bystander.kill()
        bystander.wait()
