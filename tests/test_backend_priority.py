"""The niced projector's Postgres backends run at its niceness, in their threads and their
autogroups (``common/backendpriority.py``), and a backend that cannot be reniced leaves the
projector working as before."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from jobrunner.common.backendpriority import is_local_backend, lower_priority
from jobrunner.common.cpupriority import autogroup_niceness
from jobrunner.common.settings import Settings

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
