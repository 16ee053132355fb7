"""Failure is explicit: every failed job says why, with a code and a sentence."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, start_job, wait_status


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
