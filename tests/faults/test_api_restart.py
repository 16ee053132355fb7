"""The API process killed and started again while many SSE clients follow one job: each client
reconnects with ``Last-Event-ID`` and, in the end, has every line exactly once, in order, and one
``done``."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.faults import figures
from tests.faults.cluster import FaultCluster, is_terminal, now
from tests.faults.invariants import lines_problems, outcome, settle_lines
from tests.faults.scenarios import SETTLE_SECONDS
from tests.faults.toolrecord import ToolJob
from tests.faults.viewers import Viewer

CLIENTS = 20
LINES = 300
INTERVAL = 0.03
FOLLOW_TIMEOUT = 90.0


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


async def test_api_restart_every_sse_client_resumes_without_gap_or_duplicate(
    cluster: FaultCluster,
) -> None:
    """API restarted under 20 live viewers: each gets every line once and one done."""
    job: ToolJob = await cluster.submit("free", lines=LINES, interval=INTERVAL)
    assert await cluster.wait_stored(job.id, 1, 60) >= 1
    viewers = [Viewer(job.id) for _ in range(CLIENTS)]
    problems: list[str] = []
    row = None
    recovery = terminal_s = down = None
    async with httpx.AsyncClient(
        base_url=cluster.base_url,
        timeout=httpx.Timeout(30, read=None),
        limits=httpx.Limits(max_connections=CLIENTS * 2),
    ) as client:
        tasks = [asyncio.create_task(v.follow(client)) for v in viewers]
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(*(v.got_line.wait() for v in viewers))
            api = cluster.services["api"]
            api.kill()
            killed_at = now()
            for v in viewers:
                v.got_line.clear()
            await cluster.start_service("api")
            fault_end = now()
            down = fault_end - killed_at
            # Recovery as the viewers see it: until every one of them has a line again.
            async with asyncio.timeout(60):
                await asyncio.gather(*(v.got_line.wait() for v in viewers if v.dones == 0))
            recovery = now() - fault_end
            try:
                async with asyncio.timeout(FOLLOW_TIMEOUT):
                    await asyncio.gather(*tasks)
            except TimeoutError:
                problems.append(
                    f"{sum(v.dones == 0 for v in viewers)} clients never got done "
                    f"within {FOLLOW_TIMEOUT:.0f} s"
                )
            row = await cluster.wait_job(job.id, is_terminal, 30)
            terminal_s = now() - fault_end if row is not None and is_terminal(row) else None
            if row is None or row.status != "completed":
                problems.append(f"job should complete, is {outcome(row)}")
            problems += lines_problems(
                job, job.run(), await settle_lines(cluster, job, SETTLE_SECONDS)
            )
            for n, viewer in enumerate(viewers, 1):
                problems += viewer.problems(n, len(job.run().lines))
            if not any(v.connects > 1 for v in viewers):
                problems.append("no client had to reconnect: the fault did not bite")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            figures.record(
                figures.Figure(
                    fault=f"API SIGKILLed, restarted; {CLIENTS} SSE clients following",
                    outcome=outcome(row),
                    printed=len(job.run().lines),
                    stored=await cluster.stored_count(job.id),
                    recovery_s=recovery,
                    terminal_s=terminal_s,
                    holds=not problems,
                    note="; ".join(
                        [
                            f"clients complete: {sum(not v.problems(0, LINES) for v in viewers)}"
                            f"/{CLIENTS}, API down {figures.seconds(down)} s",
                            *problems[:5],
                        ]
                    ),
                )
            )
    assert not problems, "\n".join(problems)
