"""One of two runners SIGKILLed mid-job on the cluster: its job ends RUNNER_LOST (within the
lease TTL, bounded here by the TTL plus the suite's grace) and the job queued on the same lock
runs on the other runner, never beside the lost one."""

from __future__ import annotations

import time

from tests.cluster import NodeCluster
from tests.faults.cluster import is_terminal, now
from tests.faults.invariants import (
    alive_problems,
    lines_problems,
    outcome,
    overlap_problems,
    settle_lines,
)
from tests.faults.scenarios import END_GRACE, INTERVAL, SETTLE_SECONDS, follow_job
from tests.multinode import figures

LINES_BEFORE_FAULT = 20


async def test_runner_killed_mid_job_ends_it_runner_lost_and_the_queued_job_runs_on_the_other(
    node_cluster: NodeCluster,
) -> None:
    """A runner killed mid-job: the job ends RUNNER_LOST, the next job of its lock runs on the
    other runner."""
    cluster = node_cluster
    job_type = cluster.fresh_lock_type()
    a = await cluster.submit(job_type, lines=2000, interval=INTERVAL)
    assert await cluster.wait_stored(a.id, LINES_BEFORE_FAULT, 60) >= LINES_BEFORE_FAULT
    a_row = await cluster.wait_job(a.id, lambda r: r.runner_id is not None, 30)
    assert a_row is not None
    assert a_row.runner_id in cluster.runner_names, a_row
    victim = a_row.runner_id
    survivor = next(name for name in cluster.runner_names if name != victim)
    b = await cluster.submit(job_type, lines=10, interval=INTERVAL)

    cluster.services[victim].kill()
    fault_end, killed_at = now(), time.time()  # the tools record wall-clock times
    problems: list[str] = []
    a_end = b_row = None
    a_terminal_s = b_started_s = None
    try:
        a_end, _, a_terminal_s = await follow_job(
            cluster, a, fault_end, cluster.lease_ttl + END_GRACE
        )
        if a_end is None or (a_end.status, a_end.error_code) != ("failed", "RUNNER_LOST"):
            problems.append(f"A should end failed RUNNER_LOST, is {outcome(a_end)}")
        b_row = await cluster.wait_job(b.id, is_terminal, 60)
        b_started = b.run().started
        b_started_s = b_started - killed_at if b_started is not None else None
        if b_row is None or b_row.status != "completed":
            problems.append(f"B should complete, is {outcome(b_row)}")
        elif b_row.runner_id != survivor:
            problems.append(f"B ran on {b_row.runner_id}, not on the surviving {survivor}")
        problems += lines_problems(
            a, a.run(), await settle_lines(cluster, a, SETTLE_SECONDS), prefix_only=True
        )
        problems += lines_problems(b, b.run(), await settle_lines(cluster, b, SETTLE_SECONDS))
        problems += overlap_problems([a, b])
        problems += await alive_problems([a, b])
    finally:
        figures.record(
            figures.Figure(
                scenario="runner SIGKILLed mid-job (1 of 2), next job of its lock queued",
                outcome=f"A {outcome(a_end)}; B {outcome(b_row)} on "
                f"{getattr(b_row, 'runner_id', None)}",
                printed=len(a.run().lines) + len(b.run().lines),
                stored=await cluster.stored_count(a.id) + await cluster.stored_count(b.id),
                received="-",
                progressed_s=b_started_s,
                election_s=None,
                holds=not problems,
                note=f"A ended {figures.seconds(a_terminal_s)} s after the kill (lease TTL "
                f"{cluster.lease_ttl:g} s); progressed: B's tool started on the other runner",
            )
        )
        await cluster.start_service(victim)
    assert not problems, "\n".join(problems)
