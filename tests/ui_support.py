"""Helpers the web UI tests share: their job types and waiting for a job through the API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System

TEST_TYPES = str(Path(__file__).parent / "tools" / "jobtypes.toml")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test's settings with the test job types (``TEST_TYPES``): a module that imports this
    fixture runs its system with them."""
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


TERMINAL = {"completed", "failed", "cancelled"}


async def start_job(system: System, job_type: str, **parameters: Any) -> str:
    async with system.client() as client:
        created = await client.post(
            "/api/jobs", json={"job_type": job_type, "parameters": parameters}
        )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def wait_for_status(system: System, job_id: str, statuses: set[str]) -> dict[str, Any]:
    """Poll the job until its status is one of ``statuses`` (30 s at most)."""
    async with system.client() as client, asyncio.timeout(30):
        while True:
            job = (await client.get(f"/api/jobs/{job_id}")).json()
            if job["status"] in statuses:
                return dict(job)
            await asyncio.sleep(0.05)


async def cancel_job(system: System, job_id: str) -> None:
    async with system.client() as client:
        await client.delete(f"/api/jobs/{job_id}")
