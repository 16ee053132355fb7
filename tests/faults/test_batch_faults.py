"""A batch submission hurt half-way: NATS paused (just below and above the publish ack wait of
5 s, and above the ack wait plus the publish timeout) and the API SIGKILLed. Invariants: no job
of the batch starts before its seal; the POST answers 201 with the whole batch stored, or an
error; a retry with the same Idempotency-Key completes the batch; every JobRequested is stored
exactly once; every job then runs to its end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from jobrunner.common import batchids, eventstore
from jobrunner.common.subscription import last_message
from jobrunner.contracts.names import Names
from jobrunner.embedded.scratch import scratch_dir
from tests.faults import figures
from tests.faults.cluster import FaultCluster, job_types_toml, now
from tests.freeze import freeze

JOBS = 1000
# The batch's jobs are internal callables: thousands of them run in seconds, no process each.
BATCH_TYPE = "batch_item"
EXTRA_TYPES = (
    f'[job_types.{BATCH_TYPE}]\ncallable = "tests.tools.internal_jobs:counts"\n'
    f'[job_types.{BATCH_TYPE}.parameters.lines]\ntype = "integer"\ndefault = 1\n'
)
ACK_WAIT = eventstore.ACK_WAIT_SECONDS
# The faults here hit the submission, before any job runs; the thousand jobs then run two
# runners' full capacity at once, and at the fault suite's 3 s lease a CI machine's load stalled
# a runner past the renewal deadline now and then (a few jobs LEASE_LOST, as designed for a
# stalled runner). The 6 s pause while the jobs start must not cost a running job its lease: a
# lease survives an outage of three quarters of its TTL less one renewal interval (lease.py's
# survivable_outage), and the renewal sent first in the pause confirms it once NATS is back, if
# its answer is read in time by a runner that is catching up with hundreds of claims on a loaded
# machine. At 12 s (7 s) that left one second for it, the margin whose like (a restart of NATS
# against a 3 s lease's 1.75 s) failed CI in session 26. At 20 s it is 11.7 s: 5.7 s to spare.
BATCH_LEASE_TTL = 20.0
BODY = {
    "batch_name": "fault batch",
    "jobs": [{"job_type": BATCH_TYPE, "parameters": {"lines": 1}}] * JOBS,
}


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[FaultCluster]:
    """A cluster of this module's own: its faults hit the API and NATS of one submission."""
    with scratch_dir("jobrunner-test-batchfaults-") as root:
        running = FaultCluster(root, BATCH_LEASE_TTL)
        running.job_types_file.write_text(job_types_toml() + EXTRA_TYPES)
        try:
            await running.start()
            yield running
        finally:
            await running.stop()


class StreamView:
    """The test's own look at the stream (not through the API, which may be the part hurt)."""

    def __init__(self, cluster: FaultCluster) -> None:
        self.cluster = cluster
        self.names = Names(cluster.settings.prefix)

    async def has(self, subject: str) -> bool:
        nc = await eventstore.connect(self.cluster.settings, "test-batch-faults")
        try:
            return await last_message(nc.jetstream(), self.names.stream, subject) is not None
        finally:
            await eventstore.close(nc)

    async def requested_counts(self, batch_id: str) -> list[int]:
        """How often each job's JobRequested is stored, in batch order."""
        nc = await eventstore.connect(self.cluster.settings, "test-batch-faults")
        try:
            info = await nc.jetstream().stream_info(
                self.names.stream, subjects_filter=self.names.kind_subjects("requested")
            )
        finally:
            await eventstore.close(nc)
        counts = info.state.subjects or {}
        return [
            counts.get(self.names.job_kind_subject(batchids.job_id(batch_id, i), "requested"), 0)
            for i in range(JOBS)
        ]


async def statuses(cluster: FaultCluster, batch_id: str) -> dict[str, int]:
    rows = await cluster.query(
        "SELECT status, count(*) AS n FROM readmodel.jobs WHERE batch_id = $1 GROUP BY status",
        batch_id,
    )
    return {r["status"]: r["n"] for r in rows}


async def failures(cluster: FaultCluster, batch_id: str) -> dict[str, int]:
    """How many jobs of the batch ended with each error code and message (to say why)."""
    rows = await cluster.query(
        "SELECT error_code, error_message, count(*) AS n FROM readmodel.jobs"
        " WHERE batch_id = $1 AND error_code IS NOT NULL GROUP BY 1, 2",
        batch_id,
    )
    return {f"{r['error_code']}: {r['error_message']}": r["n"] for r in rows}


async def wait_all_ended(cluster: FaultCluster, batch_id: str, timeout: float) -> dict[str, int]:
    seen: dict[str, int] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                seen = await statuses(cluster, batch_id)
                if sum(seen.get(s, 0) for s in ("completed", "failed", "cancelled")) == JOBS:
                    return seen
                await asyncio.sleep(0.2)
    return seen


async def post(cluster: FaultCluster, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=cluster.base_url, timeout=120) as client:
        return await client.post("/api/jobs/batch", json=BODY, headers={"Idempotency-Key": key})


async def check_completed(
    cluster: FaultCluster, view: StreamView, batch_id: str, fault: str, outcome: str, at: float
) -> None:
    problems: list[str] = []
    if not await view.has(view.names.batch_kind_subject(batch_id, "sealed")):
        problems.append("the batch is not sealed")
    counts = await view.requested_counts(batch_id)
    if counts != [1] * JOBS:
        problems.append(f"JobRequested stored {sorted(set(counts))} times, not once each")
    ended = await wait_all_ended(cluster, batch_id, 180)
    terminal_s = now() - at
    if ended.get("completed") != JOBS:
        why = await failures(cluster, batch_id)
        problems.append(f"jobs not all completed: {ended}; why: {why}")
    figures.record(
        figures.Figure(
            fault=fault,
            outcome=outcome,
            printed=JOBS,
            stored=sum(1 for c in counts if c == 1),
            recovery_s=None,
            terminal_s=terminal_s,
            holds=not problems,
            note="batch of 1000 internal jobs; printed/stored = jobs submitted/stored once",
        )
    )
    assert not problems, problems


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(ACK_WAIT - 1, id="4s-below-ack-wait"),
        pytest.param(ACK_WAIT + 1, id="6s-above-ack-wait"),
        pytest.param(2 * ACK_WAIT + 1, id="11s-above-ack-wait-and-publish-timeout"),
    ],
)
async def test_nats_paused_during_a_batch_post_then_a_retry_completes_it(
    cluster: FaultCluster, seconds: float
) -> None:
    """NATS frozen while a 1,000-job batch is published: 201 with everything stored, or an error
    and a retry with the same key that completes it; every job stored once and run."""
    view = StreamView(cluster)
    key = f"pause-{seconds}"
    after = await stream_end(view)
    answer = asyncio.create_task(post(cluster, key))
    batch_id = await batch_under_way(view, after, answer)
    cluster.pause_nats()
    try:
        await asyncio.sleep(seconds)  # the fault itself lasts this long
    finally:
        cluster.resume_nats()
    resumed = now()
    first = await answer
    assert first.status_code in (201, 503), first.text
    outcome = f"POST {first.status_code}"
    if first.status_code == 503:
        assert first.json()["error"]["code"] == "EVENT_STORE_UNAVAILABLE"
        retry = await post(cluster, key)
        assert retry.status_code == 201, retry.text
        assert retry.json()["batch_id"] == batch_id
        outcome += ", retry 201"
    else:
        assert first.json()["batch_id"] == batch_id
        assert len(first.json()["job_ids"]) == JOBS
    await check_completed(
        cluster, view, batch_id, f"NATS paused {seconds:g} s mid-batch", outcome, resumed
    )


async def test_api_killed_mid_batch_starts_nothing_until_a_retry_seals_it(
    cluster: FaultCluster,
) -> None:
    """The API SIGKILLed while it publishes a batch: no job of it starts; the same request with
    the same key, sent to the restarted API, seals the batch and every job runs once."""
    view = StreamView(cluster)
    api = cluster.services["api"]
    after = await stream_end(view)
    answer = asyncio.create_task(post(cluster, "killed"))
    # Frozen as soon as the batch's request is stored, its thousand jobs and seal still to come:
    # waiting for its first job too let a loaded CI machine's API seal it before the freeze.
    batch_id = await batch_under_way(view, after, answer, first_job=False)
    assert api.proc is not None
    freeze(api.proc.pid)  # frozen at once, killed for good below
    try:
        sealed_before_kill = await view.has(view.names.batch_kind_subject(batch_id, "sealed"))
        api.kill()
        killed = now()
        with contextlib.suppress(httpx.HTTPError):
            await answer
        assert not sealed_before_kill, "the batch was sealed before the API was killed: no fault"
        # While nobody seals the batch, no job of it starts (watched for twice the lease TTL,
        # two ack waits of the runners' consumer, one TTL each: the runners have its stored
        # jobs and look again every third of it).
        deadline = time.monotonic() + 2 * BATCH_LEASE_TTL
        while time.monotonic() < deadline:
            seen = await statuses(cluster, batch_id)
            assert set(seen) <= {"pending"}, f"a job of an unsealed batch moved on: {seen}"
            await asyncio.sleep(0.2)
    finally:
        if not api.alive:  # the module's next tests need their API, whatever happened here
            await cluster.start_service("api")
    retry = await post(cluster, "killed")
    assert retry.status_code == 201, retry.text
    assert retry.json()["batch_id"] == batch_id
    await check_completed(
        cluster, view, batch_id, "API SIGKILLed mid-batch", "killed, retry 201", killed
    )


async def test_nats_paused_while_a_batchs_jobs_start_loses_none_of_them(
    cluster: FaultCluster,
) -> None:
    """NATS frozen while the jobs of a sealed batch are being claimed and run, past nats-py's
    5 s request timeout: claims sent in the pause time out in their runner but are stored
    once NATS runs again. Every job still runs to its end, none ends RUNNER_LOST."""
    view = StreamView(cluster)
    answer = await post(cluster, "pause-while-starting")
    assert answer.status_code == 201, answer.text
    batch_id = answer.json()["batch_id"]
    async with asyncio.timeout(120):
        while True:  # until a twentieth of the jobs ended: the rest are being started
            if (await statuses(cluster, batch_id)).get("completed", 0) >= JOBS // 20:
                break
            await asyncio.sleep(0.05)
    cluster.pause_nats()
    try:
        await asyncio.sleep(ACK_WAIT + 1)  # the fault itself lasts this long
    finally:
        cluster.resume_nats()
    await check_completed(
        cluster, view, batch_id, f"NATS paused {ACK_WAIT + 1:g} s as jobs start", "POST 201", now()
    )


async def stream_end(view: StreamView) -> int:
    nc = await eventstore.connect(view.cluster.settings, "test-batch-faults")
    try:
        return (await nc.jetstream().stream_info(view.names.stream)).state.last_seq
    finally:
        await eventstore.close(nc)


async def batch_under_way(
    view: StreamView, after_seq: int, answer: asyncio.Task[httpx.Response], first_job: bool = True
) -> str:
    """The id of the batch first requested after stream sequence ``after_seq``, once its first
    job is stored too (unless ``first_job`` is false): the submission is publishing its jobs."""
    nc = await eventstore.connect(view.cluster.settings, "test-batch-faults")
    try:
        js = nc.jetstream()
        names = view.names
        async with asyncio.timeout(60):
            while True:
                msg = await last_message(
                    js, names.stream, names.batch_kind_subject("*", "requested")
                )
                if msg is not None and (msg.seq or 0) > after_seq and msg.subject:
                    batch_id = msg.subject.split(".")[2]
                    break
                if answer.done():
                    raise AssertionError(f"answered before anything was stored: {answer.result()}")
                await asyncio.sleep(0.002)
            first = names.job_kind_subject(batchids.job_id(batch_id, 0), "requested")
            while first_job and await last_message(js, names.stream, first) is None:
                if answer.done():
                    raise AssertionError(f"answered before its jobs: {answer.result().text}")
                await asyncio.sleep(0.002)  # another process publishes it: poll
        return batch_id
    finally:
        await eventstore.close(nc)
