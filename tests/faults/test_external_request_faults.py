"""An external job's requests with NATS frozen (SIGSTOP) just shorter and just longer than a
request's timeout (5 s: nats-py's JetStream request and publish timeout, which every NATS call of
a report, an ending and a cancel uses): a report, a final report and a cancel, each sent while
NATS is frozen.

The promises: every answer is a 2xx, or a 409/503 with a code, never a 500; a request answered
503 and sent again (same report_id) is stored once, also when the frozen publish got through
after all; the job ends once. The lease (20 s here) outlasts every freeze: the request's own
timeout decides, not the runner's lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import nats
import pytest

from jobrunner.contracts.names import Names
from tests.external_support import ExternalJob
from tests.faults.clients import until_answered
from tests.faults.cluster import FaultCluster, is_terminal, running_cluster
from tests.tools.status_history import statuses

REQUEST_TIMEOUT = 5.0
LEASE_TTL = 20.0
PAUSES = [
    pytest.param(REQUEST_TIMEOUT - 1.0, id="4s-below-request-timeout"),
    pytest.param(REQUEST_TIMEOUT + 1.5, id="6.5s-above-request-timeout"),
]


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[FaultCluster]:
    async with running_cluster(lease_ttl=LEASE_TTL) as running:
        yield running


async def _frozen_while(cluster: FaultCluster, seconds: float, send: Any) -> httpx.Response:
    """Freeze NATS, send the request, thaw NATS ``seconds`` later; the request's answer."""
    cluster.pause_nats()
    try:
        request = asyncio.create_task(send())
        await asyncio.sleep(seconds)  # the fault itself lasts this long
    finally:
        cluster.resume_nats()
    return await asyncio.wait_for(request, 60)


def _answer_problems(what: str, response: httpx.Response, ok: set[int]) -> list[str]:
    if response.status_code in ok:
        return []
    code = response.json().get("error", {}).get("code") if response.content else None
    if response.status_code in (409, 503) and code:
        return []
    return [f"{what}: {response.status_code} {response.text[:300]}"]


async def _started(cluster: FaultCluster, client: httpx.AsyncClient) -> ExternalJob:
    created = await client.post("/api/jobs", json={"job_type": "external"})
    assert created.status_code == 201, created.text
    job = ExternalJob(created.json())
    first = await job.report_when_held(client, report_id="r0", lines=[{"text": "line 0"}])
    assert first.status_code == 200, first.text
    return job


async def _status_history(cluster: FaultCluster, job_id: str) -> list[str]:
    nc = await nats.connect(cluster.nats.url)
    try:
        return await statuses(nc.jetstream(), Names(cluster.settings.prefix), job_id)
    finally:
        await nc.close()


@pytest.mark.parametrize("seconds", PAUSES)
async def test_report_under_frozen_nats_is_stored_once(
    cluster: FaultCluster, seconds: float
) -> None:
    problems: list[str] = []
    async with cluster.client() as client:
        job = await _started(cluster, client)

        def report() -> Any:
            return job.report(client, report_id="r1", lines=[{"text": "line 1"}])

        answer = await _frozen_while(cluster, seconds, report)
        problems += _answer_problems("the report under the freeze", answer, {200})
        again = await until_answered(report)
        problems += _answer_problems("the report sent again", again, {200})
        end = await until_answered(lambda: job.report(client, report_id="end", result={}))
        problems += _answer_problems("the final report", end, {200})
        row = await cluster.wait_job(job.id, is_terminal, 30)
        if row is None or row.status != "completed":
            problems.append(f"the job should complete, is {row}")
        await cluster.wait_stored(job.id, 2, 10)
        stored = await cluster.stored_lines(job.id)
        if stored != [(1, "line 0"), (2, "line 1")]:
            problems.append(f"stored lines: {stored} (first answer {answer.status_code})")
        history = await _status_history(cluster, job.id)
        if history != ["running", "completed"]:
            problems.append(f"status subject: {history}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("seconds", PAUSES)
async def test_final_report_under_frozen_nats_ends_the_job_once(
    cluster: FaultCluster, seconds: float
) -> None:
    problems: list[str] = []
    async with cluster.client() as client:
        job = await _started(cluster, client)

        def end() -> Any:
            return job.report(client, report_id="end", lines=[{"text": "line 1"}], result={"n": 1})

        answer = await _frozen_while(cluster, seconds, end)
        problems += _answer_problems("the final report under the freeze", answer, {200})
        again = await until_answered(end)
        problems += _answer_problems("the final report sent again", again, {200})
        if again.status_code == 200 and again.json()["status"] != "completed":
            problems.append(f"the final report sent again: {again.text}")
        later = await job.report(client, report_id="late", lines=[{"text": "late"}])
        if later.status_code != 409 or later.json()["error"]["code"] != "JOB_FINISHED":
            problems.append(f"a report after the end: {later.status_code} {later.text}")
        row = await cluster.wait_job(job.id, is_terminal, 30)
        if row is None or row.status != "completed":
            problems.append(f"the job should complete, is {row}")
        await cluster.wait_stored(job.id, 2, 10)
        stored = await cluster.stored_lines(job.id)
        if stored != [(1, "line 0"), (2, "line 1")]:
            problems.append(f"stored lines: {stored} (first answer {answer.status_code})")
        history = await _status_history(cluster, job.id)
        if history != ["running", "completed"]:
            problems.append(f"status subject: {history}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("seconds", PAUSES)
async def test_cancel_under_frozen_nats_ends_the_job_once(
    cluster: FaultCluster, seconds: float
) -> None:
    problems: list[str] = []
    async with cluster.client() as client:
        job = await _started(cluster, client)

        def cancel() -> Any:
            return client.post(f"/api/jobs/{job.id}/cancel")

        answer = await _frozen_while(cluster, seconds, cancel)
        problems += _answer_problems("the cancel under the freeze", answer, {202})
        again = await until_answered(cancel)
        if again.status_code not in (202, 409):
            problems.append(f"the cancel sent again: {again.status_code} {again.text}")
        row = await cluster.wait_job(job.id, is_terminal, 30)
        if row is None or row.status != "cancelled":
            problems.append(f"the job should end cancelled, is {row}")
        later = await job.report(client, report_id="late", lines=[{"text": "late"}])
        if later.status_code != 409 or later.json()["error"]["code"] != "JOB_FINISHED":
            problems.append(f"a report after the cancel: {later.status_code} {later.text}")
        history = await _status_history(cluster, job.id)
        if history != ["running", "cancelled"]:
            problems.append(f"status subject: {history}")
        stored = await cluster.stored_lines(job.id)
        if stored != [(1, "line 0")]:
            problems.append(f"stored lines: {stored}")
    assert not problems, "\n".join(problems)
