"""What the runner reads of a job at its request's first delivery, before it starts the job."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.jetstream_reads import last_by_subject_reads
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.runners import wait_status

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease renewed on time reads the job's cancel: none falls within this test's job.
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, lease_ttl_seconds=30.0)


async def test_a_job_with_nothing_after_its_request_is_read_once_before_it_starts(
    system: System,
) -> None:
    """The runner asks JetStream for the job's latest event only, not for its last status and
    its last cancel apart: the request is the latest, so there are none."""
    prefix = system.settings.prefix
    async with (
        last_by_subject_reads(system.settings.nats_url) as reads,
        system.client() as client,
    ):
        response = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": {"lines": 1}}
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        await wait_status(client, job_id, "completed")
    assert f"{prefix}.job.{job_id}.>" in reads.subjects
    assert f"{prefix}.job.{job_id}.status" not in reads.subjects
    assert f"{prefix}.job.{job_id}.cancel" not in reads.subjects
