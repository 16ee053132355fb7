"""NATS paused long enough that the runner gives a job's lease up (and stops its tool), but not so
long that the server lets the lease expire: the renewals the runner sent into the pause are stored
once NATS runs again, after the runner stopped waiting for them. The job's release, naming the
revision last confirmed, is refused; it must find the lease still ours and delete it, so the job
queued on the lock starts at once, not a TTL later."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import nats
import pytest

from jobrunner.contracts.names import Names
from tests.faults import figures
from tests.faults.cluster import FaultCluster, is_terminal, running_cluster
from tests.faults.invariants import (
    alive_problems,
    lines_problems,
    outcome,
    overlap_problems,
    settle_lines,
)
from tests.faults.renewals import next_renewal
from tests.faults.scenarios import INTERVAL, LINES_BEFORE_FAULT, LOST, SETTLE_SECONDS

LEASE_TTL = 12.0
# The pause starts as soon as a renewal of A's lease is seen stored. The runner gives the lease up
# ¾ TTL after sending it (9 s): by 9 s into the pause. The server keeps it a TTL after storing it
# (12 s): not before 12 s into the pause, less the moment it took to see it. A pause between the
# two has 1.5 s either side. (Struck anywhere in a renewal interval, TTL/6 = 2 s, that was 0.5 s
# either side of 9.5 s: a runner process late by half a second on a loaded machine could take its
# in-pause renewals' answers for a confirmation and keep the lease.)
PAUSE = 10.5


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[FaultCluster]:
    async with running_cluster(lease_ttl=LEASE_TTL) as running:
        yield running


async def test_a_lock_given_up_in_a_pause_passes_on_at_once_once_nats_is_back(
    cluster: FaultCluster,
) -> None:
    """A loses its lease in the pause (LEASE_LOST), B queued on the lock starts soon after NATS
    is back: well within the TTL the renewals stored late would otherwise hold the slot."""
    job_type = cluster.fresh_lock_type()
    a = await cluster.submit(job_type, lines=100_000, interval=INTERVAL)
    reached = await cluster.wait_stored(a.id, LINES_BEFORE_FAULT, 60)
    assert reached >= LINES_BEFORE_FAULT, f"A never got going: {await cluster.job(a.id)}"
    b = await cluster.submit(job_type, lines=10, interval=INTERVAL)
    nc = await nats.connect(cluster.nats.url)
    try:
        await next_renewal(nc, Names(cluster.settings.prefix))
        cluster.pause_nats()
        try:
            await asyncio.sleep(PAUSE)  # the fault itself lasts this long
        finally:
            cluster.resume_nats()
    finally:
        await nc.close()
    resumed = time.time()  # the tools record wall-clock times
    problems: list[str] = []
    a_row = b_row = None
    b_after: float | None = None
    try:
        a_row = await cluster.wait_job(a.id, is_terminal, LEASE_TTL + 20)
        b_row = await cluster.wait_job(b.id, is_terminal, 2 * LEASE_TTL + 20)
        if a_row is None or (a_row.status, a_row.error_code) not in {
            ("failed", code) for code in LOST
        }:
            problems.append(f"A should end failed LEASE_LOST/RUNNER_LOST, ended {outcome(a_row)}")
        if b_row is None or b_row.status != "completed":
            problems.append(f"B (queued on the lock) should complete, is {outcome(b_row)}")
        if (b_started := b.run().started) is not None:
            b_after = b_started - resumed
            # The runner's own steps after the pause (A's end stored, its lines published) take
            # a second or two on a loaded machine; the slot held by the late renewal took the TTL.
            if b_after >= LEASE_TTL / 2:
                problems.append(f"B started {b_after:.1f} s after NATS was back")
        problems += lines_problems(a, a.run(), await settle_lines(cluster, a, SETTLE_SECONDS))
        problems += lines_problems(b, b.run(), await settle_lines(cluster, b, SETTLE_SECONDS))
        problems += overlap_problems([a, b])
        problems += await alive_problems([a, b])
    finally:
        figures.record(
            figures.Figure(
                fault=f"NATS paused {PAUSE:g} s, lease given up (TTL {LEASE_TTL:g} s)",
                outcome=outcome(a_row),
                printed=len(a.run().lines),
                stored=await cluster.stored_count(a.id),
                recovery_s=None,
                terminal_s=None,
                holds=not problems,
                note="; ".join(
                    [f"B started {figures.seconds(b_after)} s after NATS was back", *problems]
                ),
            )
        )
        for job in (a, b):
            row = await cluster.job(job.id)
            if row is None or not is_terminal(row):
                await cluster.cancel(job.id)
    assert not problems, "\n".join(problems)
