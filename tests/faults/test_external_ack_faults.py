"""An external job's first report (its ``running``), a report, its final report and a cancel,
and a job's submission, with the fault landing between the API's publish and its ack: the
message stored, the ack held back
(``tests/ackholding_proxy.py``, between the API and NATS), while NATS is frozen (SIGSTOP) just
shorter and just longer than the 5 s JetStream publish timeout, or SIGKILLed and started again
on the same port and store at once (the ack lost with the connection).

The promises: every answer is a 2xx, or a 409/503 with a code, never a 500 or a hang; the
request sent again (same report_id, same Idempotency-Key) stores nothing twice (the Nats-Msg-Id
of what was stored before the fault is still known after a restart); the job ends once and does
not stay running.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import httpx
import nats
import pytest

from jobrunner.common.slots import SlotTable
from jobrunner.contracts.names import Names
from tests.ackholding_proxy import AckHoldingProxy
from tests.external_support import ExternalJob
from tests.faults.clients import create_until_answered, until_answered
from tests.faults.cluster import FaultCluster, is_terminal
from tests.faults.proxied import (
    Fault,
    ProxiedCluster,
    duplicate_window,
    proxied_cluster,
    strike_at_ack,
)
from tests.tools.status_history import statuses

PUBLISH_TIMEOUT = 5.0  # nats-py's JetStream publish timeout, which the API's publishes use
LEASE_TTL = 20.0  # outlasts every fault: the request's own timeout decides


FAULTS = [
    pytest.param(Fault(False, PUBLISH_TIMEOUT - 1.0), id="frozen-4s"),
    pytest.param(Fault(False, PUBLISH_TIMEOUT + 1.5), id="frozen-6.5s"),
    pytest.param(Fault(True, 0.0), id="killed-restarted-at-once"),
]
# The API meets a kill at the ack as it meets a freeze past the publish timeout (its publish
# fails, 503, the request sent again meets the stored message by its id); what a kill adds is
# that the server still knows the id after a restart, the same for every subject: the report's
# case checks it (and the duplicate-window case kills too). The rest keep the pair either side
# of the timeout, without the kill (~15 s each with the cluster's recovery after a restart).
FROZEN = FAULTS[:2]


@dataclass
class Setup:
    cluster: ProxiedCluster
    proxy: AckHoldingProxy


@pytest.fixture(scope="module")
async def setup() -> AsyncIterator[Setup]:
    async with proxied_cluster(LEASE_TTL, {"api"}) as (cluster, proxy):
        yield Setup(cluster, proxy)


async def _faulted(
    setup: Setup,
    fault: Fault,
    subject: str,
    send: Callable[[], Awaitable[httpx.Response]],
    prefix: bool = False,
    republished: bool = False,
) -> httpx.Response | str:
    """Send the request; once its publish to ``subject`` has gone out, strike ``fault``; the
    request's answer (or what went wrong instead). ``republished``: the request publishes an
    event whose ack did not come in time once more itself (``eventstore.publish_many``)."""
    request = asyncio.create_task(send())
    failed = await strike_at_ack(setup.cluster, setup.proxy, fault, subject, prefix)
    if failed is not None:
        request.cancel()
        return failed
    try:
        answer = await asyncio.wait_for(request, 60)
    except (TimeoutError, httpx.HTTPError) as exc:
        return f"no answer: {exc!r}"
    # The premise: a fault longer than the publish timeout (a kill loses the ack) is answered
    # 503, so the request sent again is what meets the message stored before the fault; or the
    # request published it again itself, and met it there.
    longer = fault.kill or fault.seconds > PUBLISH_TIMEOUT
    if longer and not republished and answer.status_code != 503:
        return f"premise: {fault} answered {answer.status_code} {answer.text[:200]}"
    if (not longer or republished) and answer.status_code == 503:
        return f"premise: {fault} answered {answer.status_code} {answer.text[:200]}"
    return answer


def _answer_problems(what: str, response: httpx.Response | str, ok: set[int]) -> list[str]:
    if isinstance(response, str):
        return [f"{what}: {response}"]
    if response.status_code in ok:
        return []
    code = response.json().get("error", {}).get("code") if response.content else None
    if response.status_code in (409, 503) and code:
        return []
    return [f"{what}: {response.status_code} {response.text[:300]}"]


async def _started(client: httpx.AsyncClient) -> ExternalJob:
    created = await create_until_answered(client, {"job_type": "external"})
    assert created.status_code == 201, created.text
    job = ExternalJob(created.json())
    first = await job.report_when_held(client, report_id="r0", lines=[{"text": "line 0"}])
    assert first.status_code == 200, first.text
    return job


async def _held(cluster: FaultCluster, job_id: str) -> bool:
    """Until a runner holds the job's slot (its first report is then taken)."""
    nc = await nats.connect(cluster.nats.url)
    try:
        slots = SlotTable(nc.jetstream(), Names(cluster.settings.prefix), LEASE_TTL)
        async with asyncio.timeout(30):
            while await slots.holder(job_id) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the runner writes it: poll
        return True
    except TimeoutError:
        return False
    finally:
        await nc.close()


async def _status_history(cluster: FaultCluster, job_id: str) -> list[str]:
    nc = await nats.connect(cluster.nats.url)
    try:
        return await statuses(nc.jetstream(), Names(cluster.settings.prefix), job_id)
    finally:
        await nc.close()


async def _ends(cluster: FaultCluster, job_id: str, status: str) -> list[str]:
    row = await cluster.wait_job(job_id, is_terminal, 30)
    if row is None or row.status != status:
        return [f"the job should end {status}, is {row}"]
    return []


@pytest.mark.parametrize("fault", FAULTS)
async def test_report_with_its_ack_lost_is_stored_once(setup: Setup, fault: Fault) -> None:
    cluster = setup.cluster
    problems: list[str] = []
    async with cluster.client() as client:
        job = await _started(client)

        def report() -> Awaitable[httpx.Response]:
            return job.report(client, report_id="r1", lines=[{"text": "line 1"}])

        subject = f"{cluster.settings.prefix}.job.{job.id}.lines"
        answer = await _faulted(setup, fault, subject, report)
        problems += _answer_problems("the report under the fault", answer, {200})
        again = await until_answered(report)
        problems += _answer_problems("the report sent again", again, {200})
        end = await until_answered(lambda: job.report(client, report_id="end", result={}))
        problems += _answer_problems("the final report", end, {200})
        problems += await _ends(cluster, job.id, "completed")
        await cluster.wait_stored(job.id, 2, 10)
        stored = await cluster.stored_lines(job.id)
        if stored != [(1, "line 0"), (2, "line 1")]:
            problems.append(f"stored lines: {stored}")
        history = await _status_history(cluster, job.id)
        if history != ["running", "completed"]:
            problems.append(f"status subject: {history}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("fault", FROZEN)
async def test_first_report_with_its_running_ack_lost_starts_the_job_once(
    setup: Setup, fault: Fault
) -> None:
    """The first report stores the job's ``running`` (conditionally on the status subject):
    its ack lost, the report sent again finds it stored and goes on."""
    cluster = setup.cluster
    problems: list[str] = []
    async with cluster.client() as client:
        created = await create_until_answered(client, {"job_type": "external"})
        assert created.status_code == 201, created.text
        job = ExternalJob(created.json())
        assert await _held(cluster, job.id), "no runner took the job"

        def first() -> Awaitable[httpx.Response]:
            return job.report(client, report_id="r0", lines=[{"text": "line 0"}])

        subject = f"{cluster.settings.prefix}.job.{job.id}.status"
        answer = await _faulted(setup, fault, subject, first)
        problems += _answer_problems("the first report under the fault", answer, {200})
        again = await until_answered(first)
        problems += _answer_problems("the first report sent again", again, {200})
        end = await until_answered(lambda: job.report(client, report_id="end", result={}))
        problems += _answer_problems("the final report", end, {200})
        problems += await _ends(cluster, job.id, "completed")
        await cluster.wait_stored(job.id, 1, 10)
        stored = await cluster.stored_lines(job.id)
        if stored != [(1, "line 0")]:
            problems.append(f"stored lines: {stored}")
        history = await _status_history(cluster, job.id)
        if history != ["running", "completed"]:
            problems.append(f"status subject: {history}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("fault", FROZEN)
async def test_final_report_with_its_ack_lost_ends_the_job_once(setup: Setup, fault: Fault) -> None:
    cluster = setup.cluster
    problems: list[str] = []
    async with cluster.client() as client:
        job = await _started(client)

        def end() -> Awaitable[httpx.Response]:
            return job.report(client, report_id="end", lines=[{"text": "line 1"}], result={"n": 1})

        subject = f"{cluster.settings.prefix}.job.{job.id}.status"
        answer = await _faulted(setup, fault, subject, end)
        problems += _answer_problems("the final report under the fault", answer, {200})
        again = await until_answered(end)
        problems += _answer_problems("the final report sent again", again, {200})
        if again.status_code == 200 and again.json()["status"] != "completed":
            problems.append(f"the final report sent again: {again.text}")
        later = await until_answered(
            lambda: job.report(client, report_id="late", lines=[{"text": "late"}])
        )
        if later.status_code != 409 or later.json()["error"]["code"] != "JOB_FINISHED":
            problems.append(f"a report after the end: {later.status_code} {later.text}")
        problems += await _ends(cluster, job.id, "completed")
        await cluster.wait_stored(job.id, 2, 10)
        stored = await cluster.stored_lines(job.id)
        if stored != [(1, "line 0"), (2, "line 1")]:
            problems.append(f"stored lines: {stored}")
        history = await _status_history(cluster, job.id)
        if history != ["running", "completed"]:
            problems.append(f"status subject: {history}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("fault", FROZEN)
async def test_cancel_with_its_ack_lost_ends_the_job_once(setup: Setup, fault: Fault) -> None:
    cluster = setup.cluster
    problems: list[str] = []
    async with cluster.client() as client:
        job = await _started(client)

        def cancel() -> Awaitable[httpx.Response]:
            return client.post(f"/api/jobs/{job.id}/cancel")

        subject = f"{cluster.settings.prefix}.job.{job.id}.cancel"
        answer = await _faulted(setup, fault, subject, cancel, republished=True)
        problems += _answer_problems("the cancel under the fault", answer, {202})
        again = await until_answered(cancel)
        if again.status_code not in (202, 409):
            problems.append(f"the cancel sent again: {again.status_code} {again.text}")
        problems += await _ends(cluster, job.id, "cancelled")
        later = await until_answered(
            lambda: job.report(client, report_id="late", lines=[{"text": "late"}])
        )
        if later.status_code != 409 or later.json()["error"]["code"] != "JOB_FINISHED":
            problems.append(f"a report after the cancel: {later.status_code} {later.text}")
        history = await _status_history(cluster, job.id)
        if history != ["running", "cancelled"]:
            problems.append(f"status subject: {history}")
        stored = await cluster.stored_lines(job.id)
        if stored != [(1, "line 0")]:
            problems.append(f"stored lines: {stored}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("fault", FROZEN)
async def test_submission_with_its_ack_lost_makes_one_job(setup: Setup, fault: Fault) -> None:
    """POST /api/jobs with an Idempotency-Key, its JobRequested's ack lost: sent again, the
    same job, which runs once."""
    cluster = setup.cluster
    problems: list[str] = []
    job_type = cluster.fresh_lock_type()
    key = f"ack-{uuid.uuid4()}"  # its own each run: a key sent with another body is refused
    async with cluster.client() as client:

        def submit() -> Awaitable[httpx.Response]:
            return client.post(
                "/api/jobs",
                json={
                    "job_type": job_type,
                    "parameters": {
                        "lines": 3,
                        "record": str(cluster.records / f"{key}.txt"),
                        "label": "submitted",
                    },
                },
                headers={"Idempotency-Key": key},
            )

        # Any job's JobRequested: its id is not known before the answer.
        subject = f"{cluster.settings.prefix}.job."
        answer = await _faulted(setup, fault, subject, submit, prefix=True)
        problems += _answer_problems("the submission under the fault", answer, {201})
        again = await until_answered(submit)
        if again.status_code != 201:
            problems.append(f"the submission sent again: {again.status_code} {again.text}")
        elif (
            isinstance(answer, httpx.Response)
            and answer.status_code == 201
            and answer.json()["id"] != again.json()["id"]
        ):
            problems.append(f"two jobs: {answer.json()['id']}, {again.json()['id']}")
        if again.status_code == 201:
            job_id = again.json()["id"]
            problems += await _ends(cluster, job_id, "completed")
            rows = await cluster.query(
                "SELECT id FROM readmodel.jobs WHERE job_type = $1", job_type
            )
            if len(rows) != 1:
                problems.append(f"{len(rows)} jobs of the key's type: {[r['id'] for r in rows]}")
            history = await _status_history(cluster, job_id)
            if history != ["running", "completed"]:
                problems.append(f"status subject: {history}")
    assert not problems, "\n".join(problems)


async def test_report_sent_again_after_the_duplicate_window_is_stored_once(setup: Setup) -> None:
    """NATS killed right after it stored a report's lines and down for longer than the
    duplicate window (2 minutes; shortened to 1 s here): the worker's retries answer 503 until
    NATS is back, and the first one that gets through comes after JetStream has forgotten the
    report's event id. Its lines must not be stored again: they are the job's newest."""
    cluster = setup.cluster
    problems: list[str] = []
    async with cluster.client() as client:
        job = await _started(client)

        def report() -> Awaitable[httpx.Response]:
            return job.report(client, report_id="r1", lines=[{"text": "line 1"}])

        await duplicate_window(cluster, 1.0)
        try:
            subject = f"{cluster.settings.prefix}.job.{job.id}.lines"
            answer = await _faulted(setup, Fault(True, 2.0), subject, report)
            problems += _answer_problems("the report under the fault", answer, {200})
            again = await until_answered(report)
            problems += _answer_problems("the report sent again", again, {200})
        finally:
            await duplicate_window(cluster, 120.0)
        end = await until_answered(lambda: job.report(client, report_id="end", result={}))
        problems += _answer_problems("the final report", end, {200})
        problems += await _ends(cluster, job.id, "completed")
        await cluster.wait_stored(job.id, 2, 10)
        stored = await cluster.stored_lines(job.id)
        if stored != [(1, "line 0"), (2, "line 1")]:
            problems.append(f"stored lines: {stored}")
    assert not problems, "\n".join(problems)
