"""A replay SIGKILLed while its lines loader (a second process) loads: the loader dies with it,
nothing is left writing into Postgres, the live tables are intact and the next replay agrees."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg
import psutil

from jobrunner.common.settings import Settings
from jobrunner.services.projector.replay import REPLAY_SCHEMA, replay
from tests.cli_support import cli_env
from tests.history_support import logged_job, publish, reading_system, wait_projected

SPLIT_REPLAY = Path(__file__).parent / "tools" / "split_replay.py"


async def lines_loader_of(parent: psutil.Process, timeout: float = 60.0) -> psutil.Process:
    async with asyncio.timeout(timeout):
        while True:
            for child in parent.children():
                if "jobrunner.services.projector.linesload" in child.cmdline():
                    return child
            await asyncio.sleep(0.02)


async def wait_copy_blocked(conn: asyncpg.Connection, timeout: float = 60.0) -> None:
    """Until another session waits for a lock: the helper's, on the rebuilt lines (asyncpg
    reads the table's columns before its ``COPY``). ``pg_locks``, not ``pg_stat_activity``: that
    one is read once per transaction."""
    async with asyncio.timeout(timeout):
        while True:
            if await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
            ):
                return
            await asyncio.sleep(0.02)


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(process: psutil.Process, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if gone(process):
                return
            await asyncio.sleep(0.02)


async def test_a_replay_killed_takes_its_lines_loader_with_it(
    settings: Settings, tmp_path: Path
) -> None:
    history = []
    for n in range(10):
        history += logged_job(f"job{n}", lines=100, batch=20)
    last = await publish(settings, history)
    async with reading_system(settings):
        await wait_projected(settings, last)
        holder = await asyncpg.connect(settings.database_url)
        try:
            with (tmp_path / "replay.log").open("ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    str(SPLIT_REPLAY),
                    env={**os.environ, **cli_env(settings)},
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                )
            loader = await lines_loader_of(psutil.Process(proc.pid))
            # The helper's COPY waits on this lock: it is alive, about to write, when the
            # replay dies.
            await holder.execute("BEGIN")
            await holder.execute(f"LOCK TABLE {REPLAY_SCHEMA}.log_lines IN ACCESS EXCLUSIVE MODE")
            await wait_copy_blocked(holder)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            await wait_gone(loader)
            rows = await holder.fetchval(f"SELECT count(*) FROM {REPLAY_SCHEMA}.log_lines")
            await holder.execute("ROLLBACK")
            # Nothing writes into the rebuilt lines any more: the helper's COPY died with it.
            await asyncio.sleep(0.5)
            assert await holder.fetchval(f"SELECT count(*) FROM {REPLAY_SCHEMA}.log_lines") == rows
            assert await holder.fetchval("SELECT count(*) FROM readmodel.log_lines") == 1000
        finally:
            await holder.close()
        report = await replay(settings)
        assert report.differences == {}
        assert report.tables["log_lines"] == 1000
