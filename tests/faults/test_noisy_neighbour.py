"""One job floods its output as fast as it can while a client follows it: another job's lines
still all reach their viewer, in order and once each, while the flood runs on (the runner, the
API and the projector take turns between the flood's chunks instead of serving it alone)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.faults import figures
from tests.faults.cluster import FaultCluster, JobRow, is_terminal, now
from tests.faults.invariants import outcome
from tests.faults.viewers import Viewer

FLOOD_LINES = 1_000_000  # far more than it gets to print: cancelled once the quiet job ended
QUIET_LINES = 100
QUIET_INTERVAL = 0.01  # 100 lines/s
FOLLOW_TIMEOUT = 120.0


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


async def test_a_quiet_jobs_lines_all_arrive_in_order_beside_a_flood(
    cluster: FaultCluster,
) -> None:
    """While one job floods (followed by a client), a job printing 100 lines/s shows every
    line once, in order, and its end; the flood's viewer too gets every line it printed."""
    flood = await cluster.submit("free", lines=FLOOD_LINES, interval=0)
    problems: list[str] = []
    flood_row: JobRow | None = None
    quiet_row: JobRow | None = None
    flooding_throughout = False
    started = now()
    async with httpx.AsyncClient(
        base_url=cluster.base_url, timeout=httpx.Timeout(30, read=None)
    ) as client:
        flood_viewer = Viewer(flood.id)
        flood_task = asyncio.create_task(flood_viewer.follow(client))
        try:
            async with asyncio.timeout(60):
                await flood_viewer.got_line.wait()
            quiet = await cluster.submit("free", lines=QUIET_LINES, interval=QUIET_INTERVAL)
            quiet_viewer = Viewer(quiet.id)
            async with asyncio.timeout(FOLLOW_TIMEOUT):
                await quiet_viewer.follow(client)
            quiet_row = await cluster.wait_job(quiet.id, is_terminal, 30)
            # The flood must still have been printing, or the quiet job had no neighbour.
            flooding_throughout = not flood.run().ended
            problems += quiet_viewer.problems(1, QUIET_LINES)
        finally:
            await cluster.cancel(flood.id)
        flood_row = await cluster.wait_job(flood.id, is_terminal, 60)
        try:
            async with asyncio.timeout(FOLLOW_TIMEOUT):
                await flood_task
        except TimeoutError:
            problems.append("the flood's viewer never got done")
        printed = len(flood.run().lines)
        problems += flood_viewer.problems(2, printed)
    if not flooding_throughout:
        problems.append("the flood ended before the quiet job did")
    figures.record(
        figures.Figure(
            fault=f"a job floods its output; another prints {QUIET_LINES} lines at 100/s",
            outcome=outcome(quiet_row),
            printed=QUIET_LINES,
            stored=await cluster.stored_count(quiet_row.id) if quiet_row else 0,
            recovery_s=None,
            terminal_s=now() - started,
            holds=not problems,
            note="; ".join([f"flood printed {printed} lines, {outcome(flood_row)}", *problems[:3]]),
        )
    )
    assert quiet_row is not None
    assert quiet_row.status == "completed", outcome(quiet_row)
    assert not problems, "\n".join(problems)
