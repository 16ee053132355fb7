"""External jobs under faults: the runner holding one SIGKILLed while its worker keeps
reporting (the job must end RUNNER_LOST within the lease TTL, and the worker be told to stop), and
the API SIGKILLed while a worker reports and retries (every report stored once). In both, the
lines are stored once and numbered without gaps."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.external_support import ExternalJob
from tests.faults import figures
from tests.faults.cluster import SHORT_TTL, FaultCluster, is_terminal, now
from tests.faults.scenarios import END_GRACE

LEASE_TTL = SHORT_TTL
REPORT_INTERVAL = 0.2


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


async def keep_reporting(
    worker: httpx.AsyncClient, job: ExternalJob, stop: asyncio.Event, answers: list[httpx.Response]
) -> None:
    """A worker reporting a line every REPORT_INTERVAL until it is told to stop (any 4xx)."""
    n = 0
    while not stop.is_set():
        n += 1
        response = await job.report(worker, report_id=f"r{n}", lines=[{"text": f"line {n}"}])
        answers.append(response)
        if response.status_code >= 400:
            return
        await asyncio.sleep(REPORT_INTERVAL)


async def test_runner_killed_holding_an_external_job_ends_it_and_tells_the_worker(
    cluster: FaultCluster,
) -> None:
    """The runner holding an external job SIGKILLed: RUNNER_LOST, and the worker gets 409."""
    problems: list[str] = []
    async with cluster.client() as client:
        created = await client.post("/api/jobs", json={"job_type": "external"})
        assert created.status_code == 201, created.text
        job = ExternalJob(created.json())
        first = await job.report_when_held(client, report_id="r0", lines=[{"text": "line 0"}])
        assert first.status_code == 200, first.text
        row = await cluster.wait_job(job.id, lambda r: r.runner_id is not None, 30)
        assert row is not None, "the job never reached the read model"
        assert row.runner_id, f"no runner took the job: {row}"
        victim = row.runner_id
        answers: list[httpx.Response] = []
        stop = asyncio.Event()
        worker = asyncio.create_task(keep_reporting(client, job, stop, answers))
        try:
            cluster.services[victim].kill()
            fault_end = now()
            row = await cluster.wait_job(job.id, is_terminal, LEASE_TTL + END_GRACE)
            terminal_s = now() - fault_end
            try:
                async with asyncio.timeout(10):
                    await worker  # its next report after the end gets the answer
            except TimeoutError:
                problems.append("the worker was never told to stop")
            stop.set()
            if row is None or not is_terminal(row):
                problems.append(f"job still {row} {LEASE_TTL + END_GRACE:.0f} s after the kill")
            elif (row.status, row.error_code) != ("failed", "RUNNER_LOST"):
                problems.append(f"job should end failed RUNNER_LOST, ended {row}")
            last = answers[-1] if answers else None
            if last is None or last.status_code != 409:
                problems.append(f"the worker's last answer: {last and last.text}")
            elif last.json()["error"] != {
                "code": "JOB_FINISHED",
                "message": last.json()["error"]["message"],
                "status": "failed",
                "error_code": "RUNNER_LOST",
            }:
                problems.append(f"unclear answer to the worker: {last.text}")
            accepted = 1 + sum(1 for a in answers if a.status_code == 200)
            await cluster.wait_stored(job.id, accepted, 10)
            stored = await cluster.stored_lines(job.id)
            if [seq for seq, _ in stored] != list(range(1, len(stored) + 1)):
                problems.append(f"line numbers with gaps or twice: {[s for s, _ in stored]}")
            if [text for _, text in stored] != [f"line {n}" for n in range(accepted)]:
                problems.append(f"{accepted} reports accepted, stored {len(stored)} lines")
        finally:
            stop.set()
            worker.cancel()
            await cluster.start_service(victim)
            figures.record(
                figures.Figure(
                    fault="runner holding an external job SIGKILLed, its worker reporting",
                    outcome=f"{row.status} {row.error_code}" if row else "unknown",
                    printed=1 + sum(1 for a in answers if a.status_code == 200),
                    stored=await cluster.stored_count(job.id),
                    recovery_s=None,
                    terminal_s=round(terminal_s, 1) if row else None,
                    holds=not problems,
                    note="; ".join(problems) or "worker told JOB_FINISHED RUNNER_LOST",
                )
            )
    assert not problems, "\n".join(problems)


async def report_until_answered(
    client: httpx.AsyncClient, job: ExternalJob, **body: object
) -> httpx.Response:
    """As a careful worker does: the same report (same report_id) again after a connection
    error or a 5xx, until jobrunner answers it."""
    async with asyncio.timeout(60):
        while True:
            try:
                response = await job.report(client, **body)
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
                continue
            if response.status_code < 500:
                return response
            await asyncio.sleep(0.1)


async def test_api_killed_while_a_worker_reports_stores_every_report_once(
    cluster: FaultCluster,
) -> None:
    """The API SIGKILLed mid-reports: retried reports are stored once, lines 0..n in order."""
    reports = 40
    problems: list[str] = []
    async with cluster.client() as client:
        created = await client.post("/api/jobs", json={"job_type": "external"})
        assert created.status_code == 201, created.text
        job = ExternalJob(created.json())
        first = await job.report_when_held(client, report_id="r0", lines=[{"text": "line 0"}])
        assert first.status_code == 200, first.text
        answers: list[httpx.Response] = []

        async def work() -> None:
            for n in range(1, reports + 1):
                body = {"report_id": f"r{n}", "lines": [{"text": f"line {n}"}]}
                answers.append(await report_until_answered(client, job, **body))
                await asyncio.sleep(REPORT_INTERVAL / 2)
            answers.append(await report_until_answered(client, job, report_id="end", result={}))

        worker = asyncio.create_task(work())
        killed_at = fault_end = now()
        row = None
        terminal_s: float | None = None
        try:
            async with asyncio.timeout(30):
                while len(answers) < 5:  # noqa: ASYNC110 - the worker task appends
                    await asyncio.sleep(0.02)
            cluster.services["api"].kill()
            killed_at = now()
            await cluster.start_service("api")
            fault_end = now()
            async with asyncio.timeout(90):
                await worker
            row = await cluster.wait_job(job.id, is_terminal, 30)
            terminal_s = now() - fault_end
            if row is None or row.status != "completed":
                problems.append(f"job should complete, ended {row}")
            refused = [a.text for a in answers if a.status_code != 200]
            if refused:
                problems.append(f"reports refused: {refused}")
            await cluster.wait_stored(job.id, reports + 1, 10)
            stored = await cluster.stored_lines(job.id)
            if [seq for seq, _ in stored] != list(range(1, len(stored) + 1)):
                problems.append(f"line numbers with gaps or twice: {[q for q, _ in stored]}")
            if [text for _, text in stored] != [f"line {n}" for n in range(reports + 1)]:
                problems.append(f"stored lines differ: {[text for _, text in stored]}")
        finally:
            worker.cancel()
            figures.record(
                figures.Figure(
                    fault="API SIGKILLed and restarted while an external worker reports",
                    outcome=f"{row.status} {row.error_code or ''}".strip() if row else "unknown",
                    printed=reports + 1,
                    stored=await cluster.stored_count(job.id),
                    recovery_s=None,
                    terminal_s=round(terminal_s, 1) if terminal_s is not None else None,
                    holds=not problems,
                    note="; ".join(problems)
                    or f"API down {fault_end - killed_at:.1f} s; every report stored once",
                )
            )
    assert not problems, "\n".join(problems)
