"""The API while Postgres is away (stopped) or frozen for a while (SIGSTOPped, every backend with
it): a read of the read models answers 503 with a code and a sentence, never a 500, or waits out
the freeze; the API serves again on its own once Postgres is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests import servers
from tests.history_support import job_events, publish, reading_system, wait_projected
from tests.system import System


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres of this test's own: it is killed or frozen, so it must not be the shared one."""
    async with servers.own_postgres("jobrunner-test-api-outage-") as server:
        yield server


# How long Postgres stays frozen in the freeze test: a read waits it out.
FREEZE = 0.5


@pytest.fixture
async def system(settings: Settings, own_postgres: EmbeddedPostgres) -> AsyncIterator[System]:
    settings = msgspec.structs.replace(settings, database_url=own_postgres.url)
    async with reading_system(settings) as running:
        await wait_projected(settings, await publish(settings, job_events("before")))
        yield running


def signal_postgres(server: EmbeddedPostgres, sig: signal.Signals) -> None:
    """To the postmaster, then every process it started (each backend leads a process group of
    its own, so the postmaster's group alone would leave the open sessions answering). Stopped
    first, the postmaster starts no backend in between."""
    assert server.proc is not None
    postmaster = server.proc.pid
    os.kill(postmaster, sig)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": the comm may hold spaces, not a closing parenthesis.
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
                os.kill(int(stat.parent.name), sig)


async def read_job(system: System) -> tuple[int, dict[str, Any]]:
    # The client's own 30 s deadline only keeps a hang from holding the test for ever.
    async with system.client() as client:
        response = await client.get("/api/jobs/before")
    return response.status_code, response.json()


async def served_again(system: System) -> None:
    """Until the API serves the job again, on its own (nothing restarted)."""
    last = None
    try:
        async with asyncio.timeout(30):
            while (last := await read_job(system))[0] != 200:  # noqa: ASYNC110 (only HTTP)
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not served again 30 s after the fault; last answer {last}") from None


def assert_unavailable(status: int, body: dict[str, Any]) -> None:
    assert status == 503, body
    assert body["error"]["code"] == "READ_MODELS_UNAVAILABLE"
    assert body["error"]["message"]


async def test_postgres_stopped_reads_answer_503_with_a_code_then_recover(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """Before the fix: 500 INTERNAL_ERROR (the refused connection reached the catch-all). Stopped,
    not killed: a kill loses the test server's last commits (synchronous_commit off), which is
    the projector's matter (test_projector_outage.py), not the API's."""
    await asyncio.to_thread(own_postgres.stop)
    assert_unavailable(*await read_job(system))
    await asyncio.to_thread(own_postgres.start)
    await served_again(system)


async def test_postgres_frozen_for_a_while_is_waited_out(
    system: System, own_postgres: EmbeddedPostgres
) -> None:
    """A short freeze: the read waits for Postgres and answers 200 (not a 503: a read is not
    bounded, a slow one is legitimate; a freeze for ever holds it, RESULTS.md, left open)."""
    signal_postgres(own_postgres, signal.SIGSTOP)
    try:
        reading = asyncio.create_task(read_job(system))
        await asyncio.sleep(FREEZE)  # the fault's length: how long Postgres stays frozen
    finally:
        signal_postgres(own_postgres, signal.SIGCONT)
    status, body = await reading
    assert status == 200, body
