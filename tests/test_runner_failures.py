"""Failure is explicit: every failed job says why, with a code and a sentence."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import pytest
from nats.js.errors import NotFoundError

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, start_job, wait_file, wait_status


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease TTL long enough that a loaded test machine never lets a live lease lapse.
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


async def test_nonzero_exit_fails_with_exit_code(system: System) -> None:
    """A tool exiting 3 ends failed with exit_code 3 and EXIT_NONZERO."""
    async with system.client() as client:
        job_id = await start_job(client, "emit", lines=2, exit_code=3)
        job = await wait_status(client, job_id, "failed", "completed")
    assert job["status"] == "failed"
    assert job["exit_code"] == 3
    assert job["error"]["code"] == "EXIT_NONZERO"
    assert "code 3" in job["error"]["message"]
    assert job["log_count"] == 2


async def test_missing_binary_fails_with_spawn_failed(system: System) -> None:
    """A tool that does not exist: failed, SPAWN_FAILED, and the reason."""
    async with system.client() as client:
        job_id = await start_job(client, "missing_binary")
        job = await wait_status(client, job_id, "failed", "completed")
    assert job["error"]["code"] == "SPAWN_FAILED"
    assert "/nonexistent/jobrunner-tool" in job["error"]["message"]
    assert "No such file" in job["error"]["message"]


async def test_bad_working_directory_fails_with_spawn_failed(system: System) -> None:
    """A job type whose cwd does not exist: failed, SPAWN_FAILED, naming the directory."""
    async with system.client() as client:
        job_id = await start_job(client, "bad_cwd")
        job = await wait_status(client, job_id, "failed", "completed")
    assert job["error"]["code"] == "SPAWN_FAILED"
    assert "/nonexistent/jobrunner-dir" in job["error"]["message"]


async def test_job_that_fails_to_start_frees_its_slot(system: System) -> None:
    """After a job on a reject lock fails to start, the next job on that lock is accepted."""
    async with system.client() as client:
        job_id = await start_job(client, "locked_missing")
        job = await wait_status(client, job_id, "failed", "completed")
        again = await client.post("/api/jobs", json={"job_type": "rejecting"})
    assert job["error"]["code"] == "SPAWN_FAILED"
    assert again.status_code == 201, again.text


async def _requests_acknowledged(settings: Settings, timeout: float = 30.0) -> int:
    """Until the runners' consumer has delivered every request and had each acknowledged;
    returns how many deliveries it made (a request delivered again counts twice)."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test-acks")
    try:
        async with asyncio.timeout(timeout):
            while True:
                with contextlib.suppress(NotFoundError):  # the runner has not made it yet
                    info = await nc.jetstream().consumer_info(names.stream, names.runner_consumer)
                    delivered = info.delivered.consumer_seq if info.delivered else 0
                    if delivered and info.num_pending == 0 and info.num_ack_pending == 0:
                        return delivered
                await asyncio.sleep(0.05)
    finally:
        await eventstore.close(nc)


async def test_every_request_is_acknowledged_however_its_job_started(
    system: System, settings: Settings, tmp_path: Path
) -> None:
    """The request's ack, sent with the lease's rewrite once the tool started, goes out while
    the tool still runs; a tool that could not start and a callable are acknowledged too."""
    times = tmp_path / "times"
    async with system.client() as client:
        running = await start_job(
            client, "timed", times_dir=str(times), label="a", lines=100_000, interval="0.02"
        )
        await wait_file(times / "a.start")
        # While its tool runs, within the ack wait (the lease TTL): a request whose ack never
        # went out would only be acknowledged when delivered again (counted twice).
        assert await _requests_acknowledged(settings, timeout=settings.lease_ttl_seconds) == 1
        assert (await client.delete(f"/api/jobs/{running}")).status_code in (200, 202)
        others = [
            await start_job(client, "missing_binary"),
            await start_job(client, "internal_counts"),
            await start_job(client, "emit", lines=1),
        ]
        for job_id in [running, *others]:
            await wait_status(client, job_id, "failed", "completed", "cancelled")
    assert await _requests_acknowledged(settings) == 4  # each delivered once
