"""The shape most faults share: a job A holds a lock and prints, job B waits for the same lock,
the fault strikes while A runs, then every invariant is counted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.faults import figures
from tests.faults.cluster import FaultCluster, JobRow, is_terminal, now
from tests.faults.invariants import (
    alive_problems,
    lines_problems,
    outcome,
    overlap_problems,
    settle_lines,
)
from tests.faults.toolrecord import ToolJob

INTERVAL = 0.05  # seconds between the tool's lines
LINES_BEFORE_FAULT = 20
# Once the fault is over, a job ends within the lease TTL plus a bounded sweep: this is the bound
# the suite allows on top of the TTL (generous: the machine is shared and slow).
END_GRACE = 20.0
LOST = ("LEASE_LOST", "RUNNER_LOST")
# Once a job has ended, its remaining lines reach the read model within this long.
SETTLE_SECONDS = 10.0


@dataclass
class Expect:
    completes: bool  # True: A completes; False: A ends failed LEASE_LOST or RUNNER_LOST


async def follow_job(
    cluster: FaultCluster, job: ToolJob, since: float, timeout: float
) -> tuple[JobRow | None, float | None, float | None]:
    """Poll the job after a fault until it ends or ``timeout`` passes. Returns the last row seen,
    the seconds from ``since`` to the first new line stored (or the end, if that came first) and
    the seconds from ``since`` to its terminal status (``None``: did not happen)."""
    before = await cluster.stored_count(job.id)
    row = None
    recovery = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                row = await cluster.job(job.id)
                ended = row is not None and is_terminal(row)
                if recovery is None and (ended or await cluster.stored_count(job.id) > before):
                    recovery = now() - since
                if ended:
                    return row, recovery, now() - since
                await asyncio.sleep(0.05)
    return row, recovery, None


async def running_on(cluster: FaultCluster, job: ToolJob) -> str:
    """The name of the runner the job runs on, once the read model says."""
    row = await cluster.wait_job(job.id, lambda r: r.runner_id is not None, 30)
    assert row is not None, "the job never reached the read model"
    assert row.runner_id, f"no runner took the job: {row}"
    return row.runner_id


async def lock_scenario(
    cluster: FaultCluster,
    fault: str,
    inject: Callable[[ToolJob], Awaitable[None]],
    expect: Expect,
    fault_seconds: float,
    checks: Callable[[ToolJob], Awaitable[list[str]]] | None = None,
) -> None:
    """Run A and B on one lock, ``inject`` the fault (given A) once A has stored some lines, then
    check: A's expected end, every printed line stored once in order (A and B), B completed
    after A, no overlap on the lock, no tool left running, and what ``checks`` finds wrong once
    A ended. Figures are recorded whatever happens."""
    job_type = cluster.fresh_lock_type()
    # Long enough to be running when the fault ends; when it should complete, not much longer.
    a_seconds = LINES_BEFORE_FAULT * INTERVAL + fault_seconds + (3 if expect.completes else 60)
    a = await cluster.submit(job_type, lines=int(a_seconds / INTERVAL), interval=INTERVAL)
    reached = await cluster.wait_stored(a.id, LINES_BEFORE_FAULT, 60)
    assert reached >= LINES_BEFORE_FAULT, f"A never got going: {await cluster.job(a.id)}"
    b = await cluster.submit(job_type, lines=10, interval=INTERVAL)

    await inject(a)
    fault_end = now()
    problems: list[str] = []
    a_timeout = (a_seconds if expect.completes else cluster.lease_ttl) + END_GRACE
    a_row, recovery, terminal_s = await follow_job(cluster, a, fault_end, a_timeout)
    try:
        if a_row is None or not is_terminal(a_row):
            problems.append(f"A still {outcome(a_row)} {a_timeout:.0f} s after the fault")
        elif expect.completes and a_row.status != "completed":
            problems.append(f"A should complete, ended {outcome(a_row)}")
        elif not expect.completes and (a_row.status, a_row.error_code) not in {
            ("failed", code) for code in LOST
        }:
            problems.append(f"A should end failed LEASE_LOST/RUNNER_LOST, ended {outcome(a_row)}")
        a_stored = await settle_lines(cluster, a, SETTLE_SECONDS)
        problems += lines_problems(a, a.run(), a_stored)
        # B can only start once A has let go of the lock: no point waiting long if A never did.
        a_ended = a_row is not None and is_terminal(a_row)
        b_row = await cluster.wait_job(b.id, is_terminal, 30 if a_ended else 5)
        if b_row is None or b_row.status != "completed":
            problems.append(f"B (queued on the lock) should complete, is {outcome(b_row)}")
        problems += lines_problems(b, b.run(), await settle_lines(cluster, b, SETTLE_SECONDS))
        problems += overlap_problems([a, b])
        problems += await alive_problems([a, b])
        if checks is not None:
            problems += await checks(a)
    finally:
        figures.record(
            figures.Figure(
                fault=fault,
                outcome=outcome(a_row),
                printed=len(a.run().lines),
                stored=await cluster.stored_count(a.id),
                recovery_s=recovery,
                terminal_s=terminal_s,
                holds=not problems,
                note="; ".join(problems),
            )
        )
        for job in (a, b):
            row = await cluster.job(job.id)
            if row is None or not is_terminal(row):
                await cluster.cancel(job.id)
    assert not problems, "\n".join(problems)
