"""The shape every node-loss test shares: job A holds a lock and prints while SSE clients follow it
through both API instances, job B waits for the same lock; a node fault strikes while A runs;
then everything is counted: A and B complete, every line printed is stored once and reaches
every client once, B never ran beside A, no tool outlives its job. The figures (lines printed,
stored, received; seconds until lines were stored again; the election seen by a client) are
recorded whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from tests.cluster import Election, NodeCluster
from tests.faults.cluster import is_terminal
from tests.faults.invariants import (
    alive_problems,
    lines_problems,
    outcome,
    overlap_problems,
    settle_lines,
)
from tests.faults.toolrecord import ToolJob
from tests.faults.viewers import Viewer
from tests.multinode import figures

INTERVAL = 0.05  # seconds between the tool's lines
LINES_BEFORE_FAULT = 20
VIEWERS_PER_API = 2
# A job may end this long after the last line it was due to print (an election, the projector
# and the readers finding the new leader, a loaded machine).
END_GRACE = 60.0
SETTLE_SECONDS = 20.0

# A fault: hurts the cluster, returns the election a client saw (None: no leader was lost).
Fault = Callable[[], Awaitable[Election | None]]


def first_line_after(job: ToolJob, moment: float) -> int | None:
    """The number of the first line the tool printed after ``moment`` (wall clock), by its own
    record; None if it has printed none since."""
    text = job.record.read_text() if job.record.exists() else ""
    for fact in text.splitlines():
        parts = fact.split()
        if parts[0] == "line" and len(parts) == 3 and float(parts[2]) > moment:
            return int(parts[1])
    return None


async def progressed_after(cluster: NodeCluster, job: ToolJob, struck: float) -> float:
    """Seconds from ``struck`` (wall clock) until the first line printed after it is stored: the
    job progressed again, for a reader of the read models."""
    while (line := first_line_after(job, struck)) is None:  # noqa: ASYNC110
        await asyncio.sleep(INTERVAL)  # the tool writes its record: poll
    while await cluster.stored_count(job.id) < line:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # stored in order by another process: poll
    return time.time() - struck


async def node_loss_scenario(
    cluster: NodeCluster,
    scenario: str,
    fault: Fault,
    fault_seconds: float,
    may_lose_lease: bool = False,
) -> None:
    """Run A and B on one lock with viewers on A, strike ``fault`` once A has stored some lines,
    and check every invariant; ``fault_seconds``: about how long the fault keeps A's lines from
    being stored (A prints for that long and a few seconds more). ``may_lose_lease``: the fault
    may keep A's lease unconfirmed past the keeper's deadline; A then ends ``LEASE_LOST``, its
    runner alive, with every line it printed stored and seen (the promise of a lost lease)."""
    job_type = cluster.fresh_lock_type()
    a_lines = int((LINES_BEFORE_FAULT * INTERVAL + fault_seconds + 5) / INTERVAL)
    a = await cluster.submit(job_type, lines=a_lines, interval=INTERVAL)
    b = await cluster.submit(job_type, lines=10, interval=INTERVAL)
    clients = [cluster.client(api=n, timeout=None) for n in range(len(cluster.api_ports))]
    viewers = [Viewer(a.id) for _ in clients for _ in range(VIEWERS_PER_API)]
    follows = [
        asyncio.create_task(viewer.follow(clients[n // VIEWERS_PER_API]))
        for n, viewer in enumerate(viewers)
    ]
    problems: list[str] = []
    election: Election | None = None
    watch: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    progressed: float | None = None
    a_row = b_row = None
    try:
        reached = await cluster.wait_stored(a.id, LINES_BEFORE_FAULT, 60)
        assert reached >= LINES_BEFORE_FAULT, f"A never got going: {await cluster.job(a.id)}"
        watch = asyncio.create_task(progressed_after(cluster, a, time.time()))
        election = await fault()
        a_row = await cluster.wait_job(a.id, is_terminal, a_lines * INTERVAL + END_GRACE)
        with contextlib.suppress(TimeoutError):
            progressed = await asyncio.wait_for(watch, SETTLE_SECONDS)
        lease_lost = a_row is not None and (a_row.status, a_row.error_code) == (
            "failed",
            "LEASE_LOST",
        )
        if a_row is None or not (a_row.status == "completed" or (may_lose_lease and lease_lost)):
            problems.append(f"A should complete, is {outcome(a_row)}")
        problems += lines_problems(a, a.run(), await settle_lines(cluster, a, SETTLE_SECONDS))
        b_row = await cluster.wait_job(b.id, is_terminal, 60)
        if b_row is None or b_row.status != "completed":
            problems.append(f"B (queued on the lock) should complete, is {outcome(b_row)}")
        problems += lines_problems(b, b.run(), await settle_lines(cluster, b, SETTLE_SECONDS))
        problems += overlap_problems([a, b])
        problems += await alive_problems([a, b])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*follows), 30)
        printed = len(a.run().lines)
        for n, viewer in enumerate(viewers):
            problems += viewer.problems(n, printed)
    finally:
        for task in follows:
            task.cancel()
        watch.cancel()
        await asyncio.gather(*follows, watch, return_exceptions=True)
        for client in clients:
            await client.aclose()
        received = sorted({len(v.lines) for v in viewers})
        figures.record(
            figures.Figure(
                scenario=scenario,
                outcome=f"A {outcome(a_row)}, B {outcome(b_row)}",
                printed=len(a.run().lines),
                stored=await cluster.stored_count(a.id),
                received=f"{'/'.join(map(str, received))} x {len(viewers)} clients",
                progressed_s=progressed,
                election_s=election.seconds if election else None,
                holds=not problems,
                note="; ".join(problems),
            )
        )
        for job in (a, b):
            row = await cluster.job(job.id)
            if row is None or not is_terminal(row):
                await cluster.cancel(job.id)
    assert not problems, "\n".join(problems)
