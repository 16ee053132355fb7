"""A 1,000-job batch submitted over HTTP and run by a real runner: when it ends, its counters
equal its jobs' real statuses, and the batch_update stream ended on the same numbers."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.batch_submit_support import batch_body, post_batch
from tests.system import System
from tests.tools.runners import RUNNER_TYPES

JOBS = 1000
FAIL_EVERY = 10  # every tenth job raises


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=RUNNER_TYPES, batch_max_body_bytes=1024 * 1024
    )


async def test_a_thousand_job_batch_ends_with_exact_counters(system: System) -> None:
    """After 1,000 jobs ran (one in ten failing), the batch shows 900 completed and 100 failed,
    exactly what its jobs say, both in GET /api/batches/{id} and in its last batch_update."""
    jobs = [
        ("internal_raises", {}) if i % FAIL_EVERY == 0 else ("internal_counts", {"lines": 1})
        for i in range(JOBS)
    ]
    last_update: dict[str, object] = {}
    async with system.client() as client:
        async with client.stream("GET", "/api/jobs/stream") as response:
            assert response.status_code == 200
            created = await post_batch(client, batch_body(*jobs, name="thousand"))
            assert created.status_code == 201, created.text
            batch_id = created.json()["batch_id"]
            event = None
            async with asyncio.timeout(240):
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "batch_update":
                        last_update = json.loads(line[6:])
                        if last_update["id"] == batch_id and last_update["finished_at"]:
                            break
        batch = (await client.get(f"/api/batches/{batch_id}")).json()
        statuses: Counter[str] = Counter()
        params: dict[str, object] = {"batch_id": batch_id, "limit": 500}
        while True:
            page = (await client.get("/api/jobs", params=params)).json()
            statuses.update(job["status"] for job in page["items"])
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
    assert statuses == {"completed": 900, "failed": 100}
    counted = {
        "completed": batch["completed_jobs"],
        "failed": batch["failed_jobs"],
        "pending": batch["pending_jobs"],
        "running": batch["processing_jobs"],
        "cancelled": batch["cancelled_jobs"],
    }
    assert counted == {"completed": 900, "failed": 100, "pending": 0, "running": 0, "cancelled": 0}
    assert (batch["status"], batch["progress_percent"], batch["total_jobs"]) == (
        "failed",
        100.0,
        1000,
    )
    assert {k: last_update[k] for k in ("completed_jobs", "failed_jobs", "status")} == {
        "completed_jobs": 900,
        "failed_jobs": 100,
        "status": "failed",
    }
