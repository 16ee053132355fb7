"""One job from an HTTP request to a live SSE stream, event-sourced end to end."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


async def test_job_runs_from_post_to_done_over_sse(system: System) -> None:
    """A started job's lines, status changes and final done arrive over a real SSE connection."""
    async with system.client() as client:
        created = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": {"lines": 20}}
        )
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["status"] == "pending"
        assert set(job) == {"id", "job_type", "status", "created_at"}

        stream = await read_stream(client, f"/jobs/stream/{job['id']}")

    assert stream.retry == 3000
    lines = [e.json for e in stream.events if e.event == "message"]
    assert [ln["text"] for ln in lines] == [f"INFO line {i} [{i}/20]" for i in range(1, 21)]
    assert [ln["seq"] for ln in lines] == list(range(1, 21))
    assert {ln["level"] for ln in lines} == {"INFO"}
    statuses = [e.json["status"] for e in stream.events if e.event == "status"]
    assert statuses == ["running", "completed"]
    assert stream.events[-1].event == "done"
    assert stream.events[-1].json["status"] == "completed"
