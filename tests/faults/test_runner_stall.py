"""A runner process stalled mid-job (SIGSTOP of the runner, not of its guardian: as a frozen VM
or cgroup, or an event loop blocked) while its job A holds a lock and B waits for it: past the
lease's bound the guardian kills A's tool before the lease can pass to B, A ends failed (the
stalled runner itself ends it LEASE_LOST once it runs again) and B runs alone; a stall shorter
than the lease survives and A completes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from jobrunner.services.runner.lease import survivable_outage
from tests.faults import figures
from tests.faults.cluster import SHORT_TTL, FaultCluster, is_terminal, now
from tests.faults.invariants import alive_problems, lines_problems, outcome, settle_lines
from tests.faults.scenarios import (
    END_GRACE,
    INTERVAL,
    LINES_BEFORE_FAULT,
    LOST,
    SETTLE_SECONDS,
    Expect,
    follow_job,
    lock_scenario,
    running_on,
)
from tests.faults.toolrecord import ToolJob
from tests.freeze import freeze, thaw

LEASE_TTL = SHORT_TTL
# How long the stalled runner's own end of A may take to show in its log once it runs again.
ENDED_WITHIN = 20.0


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


class StalledRunner:
    """Stalls the runner of a job for a while; remembers which runner it was."""

    def __init__(self, cluster: FaultCluster, seconds: float) -> None:
        self.cluster = cluster
        self.seconds = seconds
        self.name: str | None = None
        self.frozen_at: float | None = None  # wall clock, as the tool's own record

    async def __call__(self, job: ToolJob) -> None:
        self.name = await running_on(self.cluster, job)
        proc = self.cluster.services[self.name].proc
        assert proc is not None
        await asyncio.to_thread(freeze, proc.pid)  # every thread stopped; the guardian runs on
        self.frozen_at = time.time()
        try:
            await asyncio.sleep(self.seconds)  # the fault itself
        finally:
            thaw(proc.pid)

    def job_ends(self, job: ToolJob) -> list[str]:
        """The error codes of the stalled runner's ``job finished`` lines for ``job``."""
        assert self.name is not None
        codes = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.cluster.services[self.name].log_file.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("event") == "job finished" and entry.get("job_id") == job.id:
                        codes.append(str(entry.get("error_code")))
        return codes

    async def ended_lease_lost(self, job: ToolJob) -> list[str]:
        """The stalled runner, running again, ended the job once, LEASE_LOST (the tool the
        guardian killed is no tool that failed on its own)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ENDED_WITHIN):
                while not self.job_ends(job):  # noqa: ASYNC110 - another process writes it
                    await asyncio.sleep(0.1)
        codes = self.job_ends(job)
        if codes != ["LEASE_LOST"]:
            return [f"the stalled runner ended A with {codes or 'nothing'}, not LEASE_LOST"]
        return []


async def test_runner_stalled_past_its_lease_has_its_tool_killed_before_the_next_job_starts(
    cluster: FaultCluster,
) -> None:
    """The runner holding A stopped for more than twice the TTL: A's tool is dead before B's
    starts, A ends failed, B completes, every line A printed is stored once."""
    seconds = 2 * LEASE_TTL + 2
    stall = StalledRunner(cluster, seconds)
    await lock_scenario(
        cluster,
        f"runner SIGSTOPped {seconds:g} s mid-job (TTL {LEASE_TTL:g} s), its guardian running",
        stall,
        Expect(completes=False),
        seconds,
        checks=stall.ended_lease_lost,
    )


async def test_runner_stalled_shorter_than_its_lease_keeps_its_tool_and_completes(
    cluster: FaultCluster,
) -> None:
    """The runner holding A stopped for a little less than the longest stall its lease
    survives: A's tool runs on, A completes, B runs after it."""
    seconds = round(survivable_outage(LEASE_TTL) - 0.25, 2)
    await lock_scenario(
        cluster,
        f"runner SIGSTOPped {seconds:g} s mid-job (TTL {LEASE_TTL:g} s)",
        StalledRunner(cluster, seconds),
        Expect(completes=True),
        seconds,
    )


async def test_runner_stalled_past_its_lease_has_the_tool_of_a_job_without_a_lock_killed(
    cluster: FaultCluster,
) -> None:
    """A job without a lock, its runner stopped for more than twice the TTL: its tool is dead
    before the job's lease could expire (when another runner ends the job RUNNER_LOST: no tool
    of an ended job runs on), the job ends failed, every line it printed is stored once."""
    seconds = 2 * LEASE_TTL + 2
    job = await cluster.submit("free", lines=int((seconds + 60) / INTERVAL), interval=INTERVAL)
    reached = await cluster.wait_stored(job.id, LINES_BEFORE_FAULT, 60)
    assert reached >= LINES_BEFORE_FAULT, f"the job never got going: {await cluster.job(job.id)}"
    stall = StalledRunner(cluster, seconds)
    await stall(job)
    fault_end = now()
    problems: list[str] = []
    row, recovery, terminal_s = await follow_job(cluster, job, fault_end, LEASE_TTL + END_GRACE)
    try:
        if row is None or (row.status, row.error_code) not in {("failed", c) for c in LOST}:
            problems.append(f"the job should end failed LEASE_LOST/RUNNER_LOST, is {outcome(row)}")
        run = job.run()
        assert stall.frozen_at is not None
        if run.active_until is None or run.active_until >= stall.frozen_at + LEASE_TTL:
            problems.append("the tool ran on past the lease's expiry while its runner stalled")
        problems += lines_problems(job, run, await settle_lines(cluster, job, SETTLE_SECONDS))
        problems += await alive_problems([job])
        problems += await stall.ended_lease_lost(job)
    finally:
        figures.record(
            figures.Figure(
                fault=f"runner SIGSTOPped {seconds:g} s mid-job (TTL {LEASE_TTL:g} s), "
                "job without a lock",
                outcome=outcome(row),
                printed=len(job.run().lines),
                stored=await cluster.stored_count(job.id),
                recovery_s=recovery,
                terminal_s=terminal_s,
                holds=not problems,
                note="; ".join(problems),
            )
        )
        if row is None or not is_terminal(row):
            await cluster.cancel(job.id)
    assert not problems, "\n".join(problems)
