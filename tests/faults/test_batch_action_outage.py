"""NATS unresponsive (SIGSTOP ... SIGCONT) while a batch is failed, for pauses on both sides of
nats-py's 5 s request timeout (what the action's stream lookup and publishes wait for), with a
20 s lease TTL so the running job keeps its lease throughout: a runner gives its lease up three
quarters of the TTL after its last confirmed renewal (every TTL/6), so a pause is survived for
sure only below 20 - 5 - 3.3 = 11.7 s; with 12 s and renewals every TTL/3 (sure only below 5 s)
a 6.5 s pause cost the running job its lease whenever it began late in a renewal interval, as
on a loaded machine.

Below the timeout the action waits the pause out and answers 202. Above it, it may answer
``503 EVENT_STORE_UNAVAILABLE`` with part of it stored; the same action sent again finishes it.
Either way: every job ends cancelled, none of the queued ones ever starts, the batch is failed,
and the lock is free for the next job.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.faults import figures
from tests.faults.batch_jobs import END_TIMEOUT, BatchJobs, tool_runs
from tests.faults.cluster import FaultCluster, is_terminal, now, running_cluster
from tests.faults.invariants import outcome

LEASE_TTL = 20.0


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[FaultCluster]:
    async with running_cluster(lease_ttl=LEASE_TTL) as running:
        yield running


async def _until_answered(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """The action sent until it is not refused as unavailable (503)."""
    async with asyncio.timeout(60):
        while True:
            response = await client.post(path)
            if response.status_code != 503:
                return response
            await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(4.0, id="4s-below-request-timeout"),
        pytest.param(6.5, id="6.5s-above-request-timeout"),
    ],
)
async def test_nats_paused_during_a_batch_fail(cluster: FaultCluster, seconds: float) -> None:
    """NATS frozen while a fail is sent: queued jobs never start and the batch ends failed."""
    jobs = BatchJobs(cluster, f"outage-{round(seconds * 10)}", cluster.fresh_lock_type(), 20)
    await jobs.submit(lines=3000, interval=0.02)
    problems: list[str] = []
    note = ""
    terminal_s = None
    try:
        async with asyncio.timeout(60):
            while not tool_runs(jobs.record(0)):  # noqa: ASYNC110 - the tool writes it
                await asyncio.sleep(0.05)
        path = f"/api/batches/{jobs.batch_id}/fail"
        async with cluster.client() as client:
            cluster.pause_nats()
            try:
                first = asyncio.ensure_future(client.post(path))
                await asyncio.sleep(seconds)  # the fault itself lasts this long
            finally:
                cluster.resume_nats()
            resumed = now()
            answer = await first
            if answer.status_code not in (202, 503):
                problems.append(f"fail answered {answer.status_code}: {answer.text[:300]}")
            again = await _until_answered(client, path)
            if again.status_code not in (202, 409):
                problems.append(f"fail sent again answered {again.status_code}: {again.text}")
        batch, latest = await jobs.wait_all_ended(END_TIMEOUT)
        terminal_s = now() - resumed
        _, _, every = await jobs.snapshot()
        problems += jobs.problems(batch, latest, every)
        started = [i for i in range(jobs.count) if tool_runs(jobs.record(i))]
        if started != [0]:
            problems.append(f"jobs {started[:10]} ran; only job 0 was running at the fail")
        statuses = {j["status"] for j in latest}
        if statuses != {"cancelled"}:
            problems.append(f"jobs ended {sorted(statuses)}, not all cancelled")
        if batch.get("status") != "failed":
            problems.append(f"batch is {batch.get('status')}, not failed")
        after = await cluster.submit(jobs.job_type, lines=1, interval=0)
        row = await cluster.wait_job(after.id, is_terminal, 60)
        if row is None or row.status != "completed":
            problems.append(f"the next job on the lock did not run: {outcome(row)}")
        note = f"first answer {answer.status_code}; sent again: {again.status_code}"
    finally:
        batch = (await jobs.snapshot())[0]
        figures.record(
            figures.Figure(
                fault=f"NATS paused {seconds:g} s while a batch fail is sent (20 jobs on a lock, "
                f"TTL {LEASE_TTL:g} s)",
                outcome=f"batch {batch.get('status', '?')}",
                printed=0,
                stored=0,
                recovery_s=None,
                terminal_s=terminal_s,
                holds=not problems,
                note="; ".join([note, *problems[:5]]),
            )
        )
    assert not problems, "\n".join(problems)
