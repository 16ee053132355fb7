"""Jobs of the test job types (tests/tools/jobtypes.toml) started through the API: ``emit``
prints numbered lines (tests/tools/emit.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.system import System


async def emit_job(system: System, **parameters: object) -> str:
    """An ``emit`` job with ``parameters``, started; its id."""
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": parameters}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def finished_job(system: System, **parameters: object) -> dict[str, Any]:
    """Run the emit tool to the end; the job as the API shows it afterwards."""
    async with system.client() as client:
        created = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": parameters}
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        async with asyncio.timeout(60):
            while True:
                job: dict[str, Any] = (await client.get(f"/api/jobs/{job_id}")).json()
                if job["status"] == "completed" and job["log_count"] == parameters["lines"]:
                    return job
                await asyncio.sleep(0.05)
