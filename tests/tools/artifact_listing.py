"""Jobs of the artifact job types (tests/tools/artifact_jobtypes.toml) run to their end through
the API, and their artifacts as ``GET /api/jobs/{id}/artifacts`` lists them."""

from __future__ import annotations

from typing import Any

import httpx

from tests.tools.runners import start_job, wait_status


async def finished_artifact_job(
    client: httpx.AsyncClient, job_type: str, **parameters: Any
) -> dict[str, Any]:
    """A job of ``job_type`` started and waited for to its end (up to 90 s); its row."""
    job_id = await start_job(client, job_type, **parameters)
    return await wait_status(client, job_id, "completed", "failed", "cancelled", timeout=90)


async def artifacts_of(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The job's artifact listing (200 expected)."""
    response = await client.get(f"/api/jobs/{job_id}/artifacts")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
