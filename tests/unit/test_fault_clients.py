"""The fault tests' careful client (tests/faults/clients.py): a job's POST answered 503 (or lost)
is sent again only with the Idempotency-Key it was first sent with, so it never makes a second
job. The answers come from httpx's MockTransport: what is tested is the client, not the API."""

from __future__ import annotations

import httpx
import pytest

from tests.faults.clients import UnsafeResend, create_until_answered, until_answered

STORED_ANYWAY = {"error": {"code": "EVENT_STORE_UNAVAILABLE", "message": "..."}, "job_id": "j1"}


def answering(
    *answers: httpx.Response | Exception,
) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A client whose requests get ``answers`` in turn (an exception is raised for its turn)."""
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = answers[len(sent) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://api"), sent


async def test_a_keyless_job_post_answered_503_is_not_sent_again() -> None:
    client, sent = answering(httpx.Response(503, json=STORED_ANYWAY), httpx.Response(201))
    async with client:
        with pytest.raises(UnsafeResend, match="j1"):
            await until_answered(lambda: client.post("/api/jobs", json={"job_type": "t"}))
    assert len(sent) == 1


async def test_a_keyless_job_post_whose_connection_failed_is_not_sent_again() -> None:
    client, sent = answering(httpx.RemoteProtocolError("peer closed"), httpx.Response(201))
    async with client:
        with pytest.raises(UnsafeResend):
            await until_answered(lambda: client.post("/api/jobs", json={"job_type": "t"}))
    assert len(sent) == 1


@pytest.mark.parametrize("path", ["/api/jobs/batch", "/api/batches"])
async def test_a_keyless_batch_post_answered_503_is_not_sent_again(path: str) -> None:
    """A batch's 503 may leave it stored in part; sent again without its key, a second batch."""
    batch = {"batch_name": "b", "jobs": [{"job_type": "t", "parameters": {}}]}
    client, sent = answering(
        httpx.Response(503, json={"error": {"code": "EVENT_STORE_UNAVAILABLE"}}),
        httpx.Response(201),
    )
    async with client:
        with pytest.raises(UnsafeResend, match=path):
            await until_answered(lambda: client.post(path, json=batch))
    assert len(sent) == 1


async def test_a_keyed_batch_post_is_sent_again() -> None:
    client, sent = answering(httpx.ConnectError("refused"), httpx.Response(201))
    async with client:
        answer = await until_answered(
            lambda: client.post("/api/batches", json={}, headers={"Idempotency-Key": "k"})
        )
    assert answer.status_code == 201
    assert len(sent) == 2


async def test_a_job_created_until_answered_is_sent_again_with_its_first_key() -> None:
    client, sent = answering(
        httpx.Response(503, json=STORED_ANYWAY),
        httpx.ConnectError("refused"),
        httpx.Response(201, json={"id": "j1"}),
    )
    async with client:
        created = await create_until_answered(client, {"job_type": "t"})
    assert created.status_code == 201
    keys = {request.headers.get("Idempotency-Key") for request in sent}
    assert len(sent) == 3
    assert len(keys) == 1
    assert None not in keys


async def test_other_posts_are_sent_again_without_a_key() -> None:
    """A restart sent again finds its attempt (409 JOB_ACTIVE): no key needed."""
    client, sent = answering(httpx.Response(503), httpx.Response(409))
    async with client:
        answer = await until_answered(lambda: client.post("/api/jobs/j1/restart"))
    assert answer.status_code == 409
    assert len(sent) == 2
