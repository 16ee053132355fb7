"""The API SIGKILLed in the middle of a batch action, then the same action sent again: every job
ends, no job's work runs twice at once, no attempt runs twice, and the batch's counters equal its
jobs' real states.

"In the middle": a plain NATS subscriber on the batch's subjects sees the action's batch event
the moment JetStream stores it and kills the API then, while it still publishes the rest (cancels,
queue places, new attempts). The figure says how far the first request got.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import nats
import pytest

from jobrunner.common.subscription import last_message
from jobrunner.contracts.names import Names
from jobrunner.services.api.actions import attempt_job_id
from tests.faults import figures
from tests.faults.batch_jobs import END_TIMEOUT, TERMINAL, BatchJobs, tool_runs
from tests.faults.cluster import FaultCluster, is_terminal, now
from tests.faults.invariants import outcome


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


async def _kill_api_when_stored(
    cluster: FaultCluster, subject: str, action: Callable[[], Awaitable[httpx.Response]]
) -> tuple[httpx.Response | None, float]:
    """Send the action and SIGKILL the API as soon as ``subject`` gets a message; returns the
    answer (None: killed before answering) and when the kill happened."""
    nc = await nats.connect(cluster.nats.url)
    stored = asyncio.Event()

    async def on_message(_: Any) -> None:
        stored.set()

    sub = await nc.subscribe(subject, cb=on_message)
    await nc.flush()
    request = asyncio.ensure_future(action())
    try:
        async with asyncio.timeout(30):
            await stored.wait()
        cluster.services["api"].kill()
        killed_at = now()
        try:
            response: httpx.Response | None = await request
        except httpx.HTTPError:
            response = None
    finally:
        await sub.unsubscribe()
        await nc.close()
    await cluster.start_service("api")
    return response, killed_at


async def _stored_attempts(cluster: FaultCluster, roots: list[str]) -> int:
    """How many second attempts of these jobs JetStream holds (read from the stream itself: the
    read model may not show them yet)."""
    names = Names(cluster.settings.prefix)
    nc = await nats.connect(cluster.nats.url)
    try:
        js = nc.jetstream()
        found = 0
        for root in roots:
            subject = names.job_kind_subject(attempt_job_id(root, 2), "requested")
            found += await last_message(js, names.stream, subject) is not None
        return found
    finally:
        await nc.close()


async def _again(cluster: FaultCluster, path: str) -> httpx.Response:
    """The same action once more (retrying while the restarted API catches up)."""
    async with cluster.client() as client, asyncio.timeout(60):
        while True:
            response = await client.post(path)
            if response.status_code != 503:
                return response
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("kill_on", ["restarted", "first attempt"])
async def test_api_killed_mid_batch_restart_then_restart_again(
    cluster: FaultCluster, kill_on: str
) -> None:
    """Restart interrupted by SIGKILL, sent again: every job ends, no work runs twice at once."""
    jobs = BatchJobs(cluster, f"restart-{kill_on.replace(' ', '-')}", "free", 40)
    await jobs.submit(lines=20, interval=0.05)
    names = Names(cluster.settings.prefix)
    problems: list[str] = []
    note = ""
    terminal_s = None
    try:
        # Restart while some jobs run and others have ended.
        async with asyncio.timeout(60):
            while True:
                batch, _, _ = await jobs.snapshot()
                if batch and batch.get("completed_jobs", 0) >= 5:
                    break
                await asyncio.sleep(0.05)
        path = f"/api/batches/{jobs.batch_id}/restart"
        async with cluster.client() as client:
            first, killed_at = await _kill_api_when_stored(
                cluster,
                names.batch_kind_subject(jobs.batch_id, "restarted")
                if kill_on == "restarted"
                else names.kind_subjects("requested"),
                lambda: client.post(path),
            )
        before = await _stored_attempts(cluster, jobs.job_ids)
        second = await _again(cluster, path)
        if second.status_code != 202:
            problems.append(f"second restart answered {second.status_code}: {second.text}")
        batch, latest = await jobs.wait_all_ended(END_TIMEOUT)
        terminal_s = now() - killed_at
        _, _, every = await jobs.snapshot()
        problems += jobs.problems(batch, latest, every)
        note = (
            f"first answer {first.status_code if first else 'none (killed)'}; new attempts "
            f"stored before the retry {before}/{jobs.count}; attempts in all {len(every)}"
        )
    finally:
        figures.record(
            figures.Figure(
                fault=f"API SIGKILLed mid batch restart (40 jobs) on its first {kill_on!r} "
                "event, restart sent again",
                outcome=f"batch {(await jobs.snapshot())[0].get('status', '?')}",
                printed=0,
                stored=0,
                recovery_s=None,
                terminal_s=terminal_s,
                holds=not problems,
                note="; ".join([note, *problems[:5]]),
            )
        )
    assert not problems, "\n".join(problems)


async def test_api_killed_mid_batch_fail_then_fail_again(cluster: FaultCluster) -> None:
    """Fail interrupted by SIGKILL, sent again: queued jobs never start, the batch ends failed."""
    jobs = BatchJobs(cluster, "fail", cluster.fresh_lock_type(), 150)
    await jobs.submit(lines=2000, interval=0.02)
    names = Names(cluster.settings.prefix)
    problems: list[str] = []
    note = ""
    terminal_s = None
    try:
        async with asyncio.timeout(60):
            while not tool_runs(jobs.record(0)):  # noqa: ASYNC110 - the tool writes it
                await asyncio.sleep(0.05)
        path = f"/api/batches/{jobs.batch_id}/fail"
        async with cluster.client() as client:
            first, killed_at = await _kill_api_when_stored(
                cluster,
                names.batch_kind_subject(jobs.batch_id, "failed"),
                lambda: client.post(path),
            )
        _, latest_before, _ = await jobs.snapshot()
        ended_before = sum(1 for j in latest_before if j["status"] in TERMINAL)
        second = await _again(cluster, path)
        if second.status_code not in (202, 409):
            problems.append(f"second fail answered {second.status_code}: {second.text}")
        batch, latest = await jobs.wait_all_ended(END_TIMEOUT)
        terminal_s = now() - killed_at
        _, _, every = await jobs.snapshot()
        problems += jobs.problems(batch, latest, every)
        started = [i for i in range(jobs.count) if tool_runs(jobs.record(i))]
        if started != [0]:
            problems.append(f"jobs {started[:10]} ran; only job 0 was running at the fail")
        if [j["status"] for j in latest] != ["cancelled"] * jobs.count:
            problems.append("not every job ended cancelled")
        if batch.get("status") != "failed":
            problems.append(f"batch is {batch.get('status')}, not failed")
        # Nothing of the batch is left in the lock's queue: the next job on the lock runs.
        after = await cluster.submit(jobs.job_type, lines=1, interval=0)
        row = await cluster.wait_job(after.id, is_terminal, 60)
        if row is None or row.status != "completed":
            problems.append(f"the next job on the lock did not run: {outcome(row)}")
        note = (
            f"first answer {first.status_code if first else 'none (killed)'}; jobs ended before "
            f"the retry {ended_before}/{jobs.count}; retry answered {second.status_code}"
        )
    finally:
        figures.record(
            figures.Figure(
                fault="API SIGKILLed mid batch fail (150 queued jobs), fail sent again",
                outcome=f"batch {(await jobs.snapshot())[0].get('status', '?')}",
                printed=0,
                stored=0,
                recovery_s=None,
                terminal_s=terminal_s,
                holds=not problems,
                note="; ".join([note, *problems[:5]]),
            )
        )
    assert not problems, "\n".join(problems)
