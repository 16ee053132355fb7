"""The niced projector's Postgres backends run at its niceness, in their threads and their
autogroups (``common/backendpriority.py``), and a backend that cannot be reniced leaves the
projector working as before. Only our own backend: the one a local pooler lends us is left alone
(with pgbouncer, skipped where it is not installed)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs

from jobrunner.common import backendpriority
from jobrunner.common.backendpriority import is_local_backend, lower_priority, match_niceness
from jobrunner.common.cpupriority import autogroup_niceness
from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import _run_as
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import as_user, free_port
from tests.tools.open_fds import open_fds

BY = 7

# The projector's pool in a process `nice` started BY nicer than the test: both connections
# made, their backends' pids printed, held until stdin closes.
PROJECTOR_POOL = """
import asyncio, sys
from jobrunner.common.settings import Settings
from jobrunner.services.projector.service import open_pool

async def main():
    pool = await open_pool(Settings(database_url=sys.argv[1]))
    async with pool.acquire() as one, pool.acquire() as two:
        for conn in (one, two):
            print(await conn.fetchval("SELECT pg_backend_pid()"), flush=True)
        await asyncio.to_thread(sys.stdin.read)
    await pool.close()

asyncio.run(main())
"""


def niceness_from_proc(pid: int) -> int:
    """Field 19 of /proc/<pid>/stat, after the parenthesised command name."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])


async def test_the_niced_projector_s_backends_run_at_its_niceness(settings: Settings) -> None:
    """Each of the projector's pool connections has its backend as nice as the projector."""
    proc = await asyncio.create_subprocess_exec(
        "nice", "-n", str(BY), sys.executable, "-c", PROJECTOR_POOL, settings.database_url,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        pids = [int(await proc.stdout.readline()) for _ in range(2)]
        if not all(is_local_backend(pid) for pid in pids):
            pytest.skip("the test cluster's Postgres does not run on this host")
        expected = min(os.getpriority(os.PRIO_PROCESS, 0) + BY, 19)
        assert [niceness_from_proc(pid) for pid in pids] == [expected, expected]
        # Each backend is a session of its own: its autogroup too (None without autogroups).
        if autogroup_niceness(pids[0]) is not None:
            assert [autogroup_niceness(pid) for pid in pids] == [expected, expected]
    finally:
        proc.stdin.close()
        assert await proc.wait() == 0


async def test_a_backend_that_cannot_be_reniced_is_harmless() -> None:
    """A backend gone before its renice, or a pid that is no Postgres here, is left alone."""
    child = await asyncio.create_subprocess_exec("true")
    await child.wait()  # reaped: its pid names no process now
    assert await lower_priority(child.pid, BY) is False
    assert is_local_backend(child.pid) is False
    assert is_local_backend(os.getpid()) is False


def test_each_reason_is_told_once() -> None:
    first, second = f"reason {uuid.uuid4()}", f"reason {uuid.uuid4()}"
    with capture_logs() as logs:
        for reason in (first, first, second, first, second):
            backendpriority._tell_once(reason)
    assert [entry["reason"] for entry in logs] == [first, second]


async def connect(settings: Settings, via: str) -> asyncpg.Connection:
    """A connection to the test cluster over TCP or its Unix socket (skipped when the cluster
    does not run here or has no socket here)."""
    url = urlsplit(settings.database_url)
    conn = await asyncpg.connect(settings.database_url)
    try:
        if not is_local_backend(await conn.fetchval("SELECT pg_backend_pid()")):
            pytest.skip("the test cluster's Postgres does not run on this host")
        if via == "tcp":
            return conn
        directory = (await conn.fetchval("SHOW unix_socket_directories")).split(",")[0]
    except BaseException:
        await conn.close()
        raise
    await conn.close()
    if not Path(directory, f".s.PGSQL.{url.port}").exists():
        pytest.skip("the test cluster has no Unix socket here")
    return await asyncpg.connect(
        host=directory,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.path.lstrip("/"),
    )


@pytest.mark.parametrize("via", ["tcp", "unix"])
async def test_our_own_backend_is_reniced_over_tcp_and_a_unix_socket(
    settings: Settings, via: str
) -> None:
    conn = await connect(settings, via)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        expected = max(niceness_from_proc(pid), BY)  # never raised
        assert await match_niceness(conn, BY) is True
        assert niceness_from_proc(pid) == expected
    finally:
        await conn.close()


@pytest.mark.parametrize("via", ["tcp", "unix"])
async def test_a_pg_backend_pid_of_the_role_s_own_is_not_asked(
    settings: Settings, via: str
) -> None:
    """A search_path that puts a schema's pg_backend_pid() first, naming another backend of the
    same server (over a Unix socket a child of the same postmaster too): ours is reniced, the
    other one is left alone."""
    conn, other = await connect(settings, via), await connect(settings, via)
    try:
        victim = await other.fetchval("SELECT pg_backend_pid()")
        before = niceness_from_proc(victim)
        schema = f"spoof_{uuid.uuid4().hex}"
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(
            f"CREATE FUNCTION {schema}.pg_backend_pid() RETURNS int"
            f" LANGUAGE sql AS 'SELECT {victim}'"
        )
        await conn.execute(f"SET search_path = {schema}, pg_catalog")
        assert await conn.fetchval("SELECT pg_backend_pid()") == victim
        ours = await conn.fetchval("SELECT pg_catalog.pg_backend_pid()")
        assert await match_niceness(conn, BY) is True
        assert niceness_from_proc(ours) >= BY
        assert niceness_from_proc(victim) == before
    finally:
        await conn.close()
        await other.close()


async def test_the_far_end_check_runs_off_the_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a busy host's TCP table takes tens of milliseconds: the pool's init leaves the
    projector's loop free meanwhile."""
    threads: list[int] = []
    check = backendpriority.why_not_far_end

    def spied(sock: socket.socket, pid: int) -> str | None:
        threads.append(threading.get_ident())
        return check(sock, pid)

    monkeypatch.setattr(backendpriority, "why_not_far_end", spied)
    conn = await asyncpg.connect(settings.database_url)
    try:
        await match_niceness(conn, BY)
    finally:
        await conn.close()
    assert threads
    assert threading.get_ident() not in threads


async def test_the_far_end_check_leaves_no_descriptor_behind(settings: Settings) -> None:
    """The check works on a duplicate of the connection's socket: every new connection of the
    pool must close it, or a projector reconnecting for days runs out of descriptors."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await match_niceness(conn, BY)
        before = open_fds()
        for _ in range(50):
            await match_niceness(conn, BY)
        assert open_fds() == before
    finally:
        await conn.close()


@asynccontextmanager
async def pgbouncer(database_url: str) -> AsyncIterator[tuple[int, Path]]:
    """A pgbouncer (session pooling) on loopback and on a Unix socket in front of the test
    cluster; its port and socket directory."""
    url = urlsplit(database_url)
    user = _run_as()  # pgbouncer refuses to run as root, as Postgres does
    with scratch_dir("jobrunner-test-pgbouncer-") as root:
        port = free_port()
        (root / "users.txt").write_text(f'"{url.username}" ""\n')
        (root / "pgbouncer.ini").write_text(
            f"""[databases]
* = host={url.hostname} port={url.port} user={url.username} password={url.password}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {root}
auth_type = trust
auth_file = {root}/users.txt
pool_mode = session
ignore_startup_parameters = extra_float_digits,application_name
logfile = {root}/pgbouncer.log
"""
        )
        if user is not None:
            for path in (root, *root.iterdir()):
                shutil.chown(path, user)
        bouncer = await asyncio.create_subprocess_exec(
            "pgbouncer",
            str(root / "pgbouncer.ini"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **as_user(user),
        )
        try:
            for _ in range(100):  # until it listens (it starts in a few milliseconds)
                if (root / f".s.PGSQL.{port}").exists() or bouncer.returncode is not None:
                    break
                await asyncio.sleep(0.05)
            assert bouncer.returncode is None, (root / "pgbouncer.log").read_text()
            yield port, root
        finally:
            bouncer.terminate()
            await bouncer.wait()


@pytest.mark.parametrize("via", ["tcp", "unix"])
async def test_a_backend_a_local_pooler_lends_is_left_alone(settings: Settings, via: str) -> None:
    """pgbouncer on loopback or on a socket: the server backend it lends the projector serves
    its other clients (the API) next; reniced, their queries would run at the projector's
    niceness for as long as the pooler keeps it (server_lifetime)."""
    if shutil.which("pgbouncer") is None:
        pytest.skip("pgbouncer is not installed")
    url = urlsplit(settings.database_url)
    async with pgbouncer(settings.database_url) as (port, directory):
        conn = await asyncpg.connect(
            host="127.0.0.1" if via == "tcp" else str(directory),
            port=port,
            user=url.username,
            database=url.path.lstrip("/"),
        )
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            before = niceness_from_proc(pid) if is_local_backend(pid) else None
            assert await match_niceness(conn, BY) is False
            if before is not None:
                assert niceness_from_proc(pid) == before
        finally:
            await conn.close()
