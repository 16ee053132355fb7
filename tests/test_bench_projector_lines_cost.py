"""bench.projector_lines_cost: its waits for the live system end once what they wait for is
there, fail at once when the flood job ended without its lines, and fail at their bound saying
what they waited for (the harness used to wait for ever); and it loads in any tree it measures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from bench import projector_lines_cost
from bench.projector_lines_cost import wait_for_checkpoint, wait_for_flood
from jobrunner.common.settings import Settings
from jobrunner.services.projector import store
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, start_job, wait_status

# Far beyond every wait that ends here: a wait that should end at once but does not fails so.
AT_ONCE = 20


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES)


@pytest.fixture
async def db(system: System) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(system.settings.database_url)
    yield conn
    await conn.close()


async def test_the_wait_for_a_flood_ends_once_the_live_projector_holds_its_lines(
    system: System, db: asyncpg.Connection
) -> None:
    """Three lines printed over about a second, waited for with a bound far beyond it."""
    async with system.client() as client:
        job = await start_job(client, "emit", lines=3, interval="0.3")
    async with asyncio.timeout(AT_ONCE):
        await wait_for_flood(db, job, 3, limit=AT_ONCE)
    assert await db.fetchval("SELECT log_count FROM readmodel.jobs WHERE id = $1", job) == 3


async def test_a_flood_still_printing_at_the_bound_fails_saying_what_was_waited_for(
    system: System, db: asyncpg.Connection
) -> None:
    """Three lines a second apart, the bound a third of a second: the wait gives up, naming
    the job and how many of its lines are stored."""
    async with system.client() as client:
        job = await start_job(client, "emit", lines=3, interval="1")
    with pytest.raises(RuntimeError, match=rf"waited 0.3 s for the flood job {job} \(") as caught:
        await wait_for_flood(db, job, 3, limit=0.3)
    assert "of its 3 lines" in str(caught.value)


async def test_a_failed_flood_fails_the_wait_at_once(
    system: System, db: asyncpg.Connection
) -> None:
    async with system.client() as client:
        job = await start_job(client, "emit", lines=2, exit_code=3)
        await wait_status(client, job, "failed")
    async with asyncio.timeout(AT_ONCE):
        with pytest.raises(RuntimeError, match=rf"the flood job {job} ended failed: the live"):
            await wait_for_flood(db, job, 2, limit=600)


async def test_a_flood_completed_short_of_its_lines_fails_the_wait_at_once(
    system: System, db: asyncpg.Connection
) -> None:
    async with system.client() as client:
        job = await start_job(client, "emit", lines=2)
        await wait_status(client, job, "completed")
    expected = rf"the flood job {job} ended completed: the live projector holds 2 of its 5 lines"
    async with asyncio.timeout(AT_ONCE):
        with pytest.raises(RuntimeError, match=expected):
            await wait_for_flood(db, job, 5, limit=600)


async def test_the_wait_for_the_checkpoint_ends_once_the_projector_reaches_the_sequence(
    system: System, db: asyncpg.Connection
) -> None:
    """A job's events still coming (its request, start, three lines, end): the wait for a
    sequence three past the checkpoint ends when the projector reaches it."""
    async with system.client() as client:
        await wait_status(client, await start_job(client, "emit", lines=1), "completed")
        before = await store.checkpoint(db)
        await start_job(client, "emit", lines=3, interval="0.3")
    async with asyncio.timeout(AT_ONCE):
        await wait_for_checkpoint(db, before + 3, limit=AT_ONCE)
    assert await store.checkpoint(db) >= before + 3


async def test_a_checkpoint_short_of_the_sequence_at_the_bound_fails_saying_where_it_is(
    system: System, db: asyncpg.Connection
) -> None:
    async with system.client() as client:
        await wait_status(client, await start_job(client, "emit", lines=1), "completed")
    at = await store.checkpoint(db)
    expected = (
        "waited 0.3 s for the live projector's checkpoint to reach the stream's last sequence "
        f"{at + 1000:,}: it is at {at:,}"
    )
    with pytest.raises(RuntimeError, match=expected):
        await wait_for_checkpoint(db, at + 1000, limit=0.3)


def test_the_harness_loads_in_a_tree_whose_bench_lacks_its_helpers(tmp_path: Path) -> None:
    """Each measured tree's projector runs this file with that tree's ``bench`` first on the
    path: a tree older than the callgrind helpers it uses (main's ``bench.replay_cost`` had no
    public ``dumped_instructions``) must not stop it from loading."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    loaded = subprocess.run(
        [sys.executable, projector_lines_cost.__file__, "--help"],
        env={"PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "--tree" in loaded.stdout
