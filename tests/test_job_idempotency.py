"""The Idempotency-Key header on POST /api/jobs: a retried start creates one job."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext

from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.idempotency import IdempotencyKeys, record_key
from tests.batch_submit_support import stored_count
from tests.external_support import EXTERNAL_TYPES
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, wait_status


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES)


async def start(client: Any, body: dict[str, Any], key: str) -> Any:
    return await client.post("/api/jobs", json=body, headers={"Idempotency-Key": key})


async def requested_count(settings: Settings) -> int:
    return await stored_count(settings, Names(settings.prefix).kind_subjects("requested"))


async def test_a_retried_start_answers_the_same_job_once(system: System) -> None:
    """Starting a job twice with one key answers the same id; one JobRequested is stored."""
    body = {"job_type": "emit", "parameters": {"lines": 1}}
    async with system.client() as client:
        first = await start(client, body, "job-1")
        second = await start(client, body, "job-1")
        assert first.status_code == second.status_code == 201, second.text
        assert second.json()["id"] == first.json()["id"]
        await wait_status(client, first.json()["id"], "completed")
    assert await requested_count(system.settings) == 1


async def test_started_jobs_have_ids_in_the_order_they_were_started(system: System) -> None:
    """POST /api/jobs names each job with a UUIDv7 (events.new_job_id): the ids of jobs started
    one after the other sort in that order, apart from two started in the same millisecond."""
    body = {"job_type": "emit", "parameters": {"lines": 1}}
    async with system.client() as client:
        ids = []
        for _ in range(3):
            response = await client.post("/api/jobs", json=body)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        for job_id in ids:
            await wait_status(client, job_id, "completed")
    assert all(uuid.UUID(hex=job_id).version == 7 for job_id in ids)
    assert [job_id[:12] for job_id in ids] == sorted(job_id[:12] for job_id in ids)


async def test_a_key_reused_for_another_job_is_refused(system: System) -> None:
    """The same key with other parameters answers 422 IDEMPOTENCY_KEY_REUSED naming the job."""
    async with system.client() as client:
        first = await start(client, {"job_type": "emit", "parameters": {"lines": 1}}, "job-2")
        second = await start(client, {"job_type": "emit", "parameters": {"lines": 2}}, "job-2")
    assert second.status_code == 422
    error = second.json()["error"]
    assert error["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert error["job_id"] == first.json()["id"]


async def test_concurrent_starts_with_one_key_make_one_job(system: System) -> None:
    """Eight clients starting the same job with one key at once get one job between them."""
    body = {"job_type": "emit", "parameters": {"lines": 1}}
    async with system.client() as client:
        answers = await asyncio.gather(*(start(client, body, "race") for _ in range(8)))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert await requested_count(system.settings) == 1


async def test_a_retried_start_of_a_running_reject_lock_job_is_not_busy(system: System) -> None:
    """Retrying the start of a reject-lock job that is already running answers 201 with that
    job, not 409 SLOT_BUSY against itself."""
    body = {"job_type": "rejecting", "parameters": {"lines": 600}}
    async with system.client() as client:
        first = await start(client, body, "lock-retry")
        job_id = first.json()["id"]
        await wait_status(client, job_id, "running")
        second = await start(client, body, "lock-retry")
        assert second.status_code == 201, second.text
        assert second.json()["id"] == job_id
        assert second.json()["status"] == "running"
        await client.delete(f"/api/jobs/{job_id}")
        await wait_status(client, job_id, "cancelled")


async def test_a_retried_external_job_answers_the_same_callback_token(settings: Settings) -> None:
    """Retrying the start of an external job with one key answers the same job and the same
    callback token, which opens its reports."""
    system = System(msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES))
    await system.start()
    try:
        body = {"job_type": "document", "parameters": {}}
        async with system.client() as client:
            first = await start(client, body, "external-1")
            second = await start(client, body, "external-1")
            assert first.status_code == second.status_code == 201, second.text
            assert second.json()["id"] == first.json()["id"]
            assert second.json()["callback_token"] == first.json()["callback_token"]
            assert second.json()["callback_url"] == first.json()["callback_url"]
        async with system.client(token=None) as worker:
            report = await worker.post(
                first.json()["callback_url"],
                json={},
                headers={"Authorization": f"Bearer {second.json()['callback_token']}"},
            )
        # Past the token check (an empty report may still wait for the job to be held: 409).
        assert report.status_code not in (401, 403), report.text
    finally:
        await system.stop()


async def test_a_key_whose_record_cannot_be_read_is_refused_with_a_clear_error(
    js: JetStreamContext, settings: Settings
) -> None:
    """A record in the idempotency bucket that jobrunner did not write (by hand, or corrupt)
    answers 409 IDEMPOTENCY_KEY_UNREADABLE: neither a new job nor the old one is safe."""
    names = Names(settings.prefix)
    keys = IdempotencyKeys(js, names)
    bucket = await js.key_value(names.idempotency_bucket)
    await bucket.put(record_key("someone", "job-9"), b"not a record")
    with pytest.raises(ApiError) as refused:
        await keys.claim("someone", "job-9", "fingerprint", "new-id", kind="job")
    assert refused.value.status == 409
    assert refused.value.code == "IDEMPOTENCY_KEY_UNREADABLE"
