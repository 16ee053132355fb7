"""``jobrunner logs --follow`` (and ``submit --follow``) while the API restarts: the client says
on stderr when its stream is lost and when it is back, resumes with no line lost or repeated,
and gives up with a sentence and exit code 69 when the API stays away past ``--reconnect-for``.
(Before, it retried in silence: a restart looked like a job printing nothing.)"""

from __future__ import annotations

import asyncio
import re

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.terminal_client import finish, start_client

LINES = 80


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, auth=True)


async def following(system: System, reconnect_for: float) -> tuple[asyncio.subprocess.Process, str]:
    """``logs JOB --follow`` of a job printing for eight seconds, once its first line showed."""
    async with system.client() as client:
        created = await client.post(
            "/api/jobs",
            json={"job_type": "emit", "parameters": {"lines": LINES, "interval": "0.1"}},
        )
    assert created.status_code == 201, created.text
    job_id = str(created.json()["id"])
    follower = await start_client(
        system, "logs", job_id, "--follow", "--reconnect-for", str(reconnect_for)
    )
    assert follower.stdout is not None
    first = await asyncio.wait_for(follower.stdout.readline(), 30)
    assert b"line 1 [1/" in first, first
    return follower, first.decode()


def notices(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("jobrunner: ")]


async def test_an_api_restart_within_the_bound_is_told_and_loses_no_line(system: System) -> None:
    """The API away about 4 s, the bound 8 s: one line when lost, one when back, every line once
    in order, exit 0."""
    follower, first = await following(system, reconnect_for=8)
    await system.stop_api()
    await asyncio.sleep(2.5)  # the outage's length (plus the API's start)
    await system.start_api()
    run = await finish(follower)
    assert run.code == 0, run.err
    numbers = [int(n) for n in re.findall(r"line (\d+) \[", first + run.out)]
    assert numbers == list(range(1, LINES + 1))
    told = notices(run.err)
    assert len(told) == 2, run.err
    assert "lost (" in told[0]
    assert "retrying for up to 8 s, resuming after event " in told[0]
    assert told[1].startswith("jobrunner: connection back after "), told
    assert "resuming after event " in told[1]


async def test_an_api_away_past_the_bound_ends_the_follow_with_exit_69(system: System) -> None:
    """The API stopped for longer than a 2 s bound: the client says it was lost, then gives up
    with a sentence saying how to follow again, exit 69; the job goes on."""
    follower, _ = await following(system, reconnect_for=2)
    await system.stop_api()
    try:
        run = await finish(follower, timeout=30)
    finally:
        await system.start_api()
    assert run.code == 69, (run.out, run.err)
    told = notices(run.err)
    assert "lost (" in told[0], run.err
    assert "retrying for up to 2 s" in told[0]
    assert not any("connection back" in line for line in told), run.err
    assert "gave up following job" in run.err
    assert "did not come back within 2 s" in run.err
    assert "--follow` follows it again" in run.err
