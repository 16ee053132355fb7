"""A client that only follows a job's SSE stream need not wait for the read models
(``POST /api/jobs?wait=stored``): the stream of a job the projector has not applied yet is
served from JetStream, to whoever may see the job and no one else."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.jetstream_reads import last_by_subject_reads
from tests.sse_client import read_stream
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


async def _post_stored(system: System, token: str | None = None) -> str:
    """Start a job with ``wait=stored`` while the projector is stopped (no read model sees it)."""
    kwargs = {"token": token} if token else {}
    async with system.client(**kwargs) as client:
        response = await client.post(
            "/api/jobs?wait=stored", json={"job_type": "emit", "parameters": {"lines": 3}}
        )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_job_posted_with_wait_stored_streams_before_it_is_projected(
    system: System,
) -> None:
    """With the projector stopped, the job's stream still shows its lines and its end."""
    await system.stop_service("projector")
    job_id = await _post_stored(system)
    async with system.client() as client:
        stream = await read_stream(client, f"/api/jobs/{job_id}/stream")
        row = await client.get(f"/api/jobs/{job_id}")
    assert row.status_code == 404  # the read models never saw the job
    assert [e.json["seq"] for e in stream.events if e.event == "message"] == [1, 2, 3]
    assert [e.json["status"] for e in stream.events if e.event == "status"] == [
        "running",
        "completed",
    ]
    assert stream.events[-1].event == "done"


async def test_the_stream_of_a_job_just_posted_reads_no_last_status(system: System) -> None:
    """Its first viewer's stream starts at the job's request, which every status of the job
    follows: the API asks JetStream for no last status before the stream starts (a viewer
    resuming by Last-Event-ID still has it read)."""
    await system.stop_service("projector")
    job_id = await _post_stored(system)
    status_subject = f"{system.settings.prefix}.job.{job_id}.status"
    async with (
        last_by_subject_reads(system.settings.nats_url) as reads,
        system.client() as client,
    ):
        stream = await read_stream(client, f"/api/jobs/{job_id}/stream")
        await reads.settle()
        assert status_subject not in reads.subjects
        assert stream.events[-1].event == "done"
        first_id = next(e.id for e in stream.events if e.event == "message")
        await read_stream(client, f"/api/jobs/{job_id}/stream", last_event_id=first_id)
    assert status_subject in reads.subjects


async def test_an_unprojected_job_started_elsewhere_streams_from_jetstream(
    system: System,
) -> None:
    """A job this API instance did not start (another one behind the same load balancer, here
    a POST that gave up waiting for the stopped projector) streams before it is projected."""
    await system.stop_service("projector")
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "emit", "parameters": {"lines": 2}}
        )
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        stream = await read_stream(client, f"/api/jobs/{job_id}/stream")
    assert [e.json["seq"] for e in stream.events if e.event == "message"] == [1, 2]
    assert stream.events[-1].event == "done"


async def test_an_unknown_wait_is_refused(system: System) -> None:
    """``wait`` other than projected or stored answers 400 INVALID_QUERY naming the field."""
    async with system.client() as client:
        response = await client.post(
            "/api/jobs?wait=soon", json={"job_type": "emit", "parameters": {"lines": 1}}
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_QUERY"
    assert response.json()["error"]["field"] == "wait"


async def test_a_wildcard_id_streams_no_unprojected_job(system: System) -> None:
    """A path whose job id is a subject wildcard finds no job, not the last one requested."""
    await system.stop_service("projector")
    await _post_stored(system)
    async with system.client() as client:
        for wildcard in ("*", ">"):
            response = await client.get(f"/api/jobs/{wildcard}/stream")
            assert response.status_code == 404, wildcard
            assert response.json()["error"]["code"] == "JOB_NOT_FOUND"


async def test_an_unprojected_job_is_hidden_from_a_token_limited_to_its_own(
    system: System,
) -> None:
    """A token that sees only its own jobs cannot stream another's job before it is projected."""
    await system.stop_service("projector")
    job_id = await _post_stored(system)
    own = await system.create_token("own", role="operator", own_jobs_only=True)
    async with system.client(token=own) as client:
        response = await client.get(f"/api/jobs/{job_id}/stream")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "JOB_NOT_FOUND"
