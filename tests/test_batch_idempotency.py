"""The Idempotency-Key header on a batch: a retried request creates nothing twice."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from jobrunner.common import batchids, eventstore
from jobrunner.common.jobtypes import load_job_types
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.services.api.batchpublish import BatchEvents
from jobrunner.services.api.batchrequest import plan_batch
from jobrunner.services.api.idempotency import KeyRecord, record_key
from tests.batch_submit_support import batch_body, is_sealed, jetstream, post_batch, stored_count
from tests.system import System
from tests.tools.runners import RUNNER_TYPES


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES)


BODY = batch_body(("emit", {"lines": 1}), ("emit", {"lines": 2}), ("internal_counts", {}))


async def test_the_same_key_and_body_answer_the_same_batch_once(projector_and_api: System) -> None:
    """Sending a batch twice with one key answers the same ids; the stream holds it once."""
    async with projector_and_api.client() as client:
        first = await post_batch(client, BODY, key="order-42")
        second = await post_batch(client, BODY, key="order-42")
    assert first.status_code == second.status_code == 201, second.text
    assert first.json() == second.json()
    assert await stored_count(projector_and_api.settings) == 3 + 2


async def test_a_key_reused_for_another_batch_is_refused(projector_and_api: System) -> None:
    """The same key with a different body answers 422 IDEMPOTENCY_KEY_REUSED and adds nothing."""
    other = batch_body(("emit", {"lines": 9}))
    async with projector_and_api.client() as client:
        first = await post_batch(client, BODY, key="k1")
        second = await post_batch(client, other, key="k1")
    assert second.status_code == 422, second.text
    error = second.json()["error"]
    assert error["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert error["batch_id"] == first.json()["batch_id"]
    assert await stored_count(projector_and_api.settings) == 3 + 2


async def test_the_same_batch_spelled_differently_is_the_same_request(
    projector_and_api: System,
) -> None:
    """Key order and defaults left out do not make a retry a different request."""
    spelled = {
        "jobs": [
            {"parameters": {"lines": 1, "interval": "0"}, "job_type": "emit"},
            {"job_type": "emit", "parameters": {"lines": 2}},
            {"job_type": "internal_counts"},
        ],
        "batch_name": BODY["batch_name"],
    }
    async with projector_and_api.client() as client:
        first = await post_batch(client, BODY, key="k2")
        second = await post_batch(client, spelled, key="k2")
    assert second.status_code == 201, second.text
    assert second.json()["batch_id"] == first.json()["batch_id"]


async def test_concurrent_requests_with_one_key_make_one_batch(projector_and_api: System) -> None:
    """Eight clients sending the same batch with one key at once get one batch between them."""
    async with projector_and_api.client() as client:
        answers = await asyncio.gather(*(post_batch(client, BODY, key="race") for _ in range(8)))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.json()["batch_id"] for a in answers}) == 1
    assert await stored_count(projector_and_api.settings) == 3 + 2


async def test_keys_of_two_callers_never_meet(projector_and_api: System) -> None:
    """Two tokens using the same key get a batch each."""
    other = await projector_and_api.create_token("other-operator", "operator")
    async with (
        projector_and_api.client() as client,
        projector_and_api.client(token=other) as second_client,
    ):
        first = await post_batch(client, BODY, key="shared")
        second = await post_batch(second_client, BODY, key="shared")
    assert second.status_code == 201
    assert first.json()["batch_id"] != second.json()["batch_id"]


@pytest.mark.parametrize("key", ["", "a" * 201, "tab\tkey", "umlaut-ä"])
async def test_a_malformed_key_is_refused(projector_and_api: System, key: str) -> None:
    """An empty, overlong or non-printable Idempotency-Key answers 400 and stores nothing."""
    async with projector_and_api.client() as client:
        response = await client.post(
            "/api/jobs/batch",
            json=BODY,
            headers={"Idempotency-Key": key.encode()},
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert await stored_count(projector_and_api.settings) == 0


async def test_a_retry_publishes_only_what_is_missing(projector_and_api: System) -> None:
    """A batch whose first submission stored only its start and job 0 (its API died) is
    completed by the retry: the missing jobs and the seal are published, nothing twice."""
    settings = projector_and_api.settings
    names = Names(settings.prefix)
    plan = plan_batch(BODY, load_job_types(settings.job_types_file), settings.batch_max_jobs)
    batch_id = batchids.new_batch_id()
    partial = BatchEvents(plan, batch_id, "test-admin")
    record = KeyRecord(id=batch_id, fingerprint=plan.fingerprint(), created_at=time.time())
    async with jetstream(settings) as js:
        kv = await js.key_value(names.idempotency_bucket)
        await kv.create(record_key("test-admin", "partial"), msgspec.json.encode(record))
        await eventstore.publish_many(js, names, [partial.requested, partial.jobs[0]])
    async with projector_and_api.client() as client:
        retry = await post_batch(client, BODY, key="partial")
    assert retry.status_code == 201, retry.text
    assert retry.json()["batch_id"] == batch_id
    assert retry.json()["job_ids"] == partial.job_ids
    assert await stored_count(settings) == 3 + 2
    assert await is_sealed(settings, batch_id)


@pytest.mark.parametrize(("wait_past_ttl", "same"), [(False, True), (True, False)])
async def test_a_key_is_remembered_for_the_ttl_only(
    settings: Settings, wait_past_ttl: bool, same: bool
) -> None:
    """Within idempotency_ttl_seconds a key answers the same batch; once its record expired the
    same request makes a new batch."""
    system = System(msgspec.structs.replace(settings, idempotency_ttl_seconds=2.0))
    await system.start_projector()
    await system.start_api()
    try:
        names = Names(settings.prefix)
        async with system.client() as client:
            first = await post_batch(client, BODY, key="short-lived")
            if wait_past_ttl:
                async with jetstream(settings) as js:
                    kv = await js.key_value(names.idempotency_bucket)
                    rkey = record_key("test-admin", "short-lived")
                    async with asyncio.timeout(30):
                        while await record_exists(kv, rkey):  # noqa: ASYNC110
                            await asyncio.sleep(0.1)  # the server expires it: poll
            second = await post_batch(client, BODY, key="short-lived")
    finally:
        await system.stop()
    assert second.status_code == 201, second.text
    assert (second.json()["batch_id"] == first.json()["batch_id"]) is same


async def record_exists(kv: Any, key: str) -> bool:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return False
    return bool(entry.value)
