"""One viewer sends a ``Last-Event-ID`` beyond the end of the stream before anyone else watches
the job: it must change nothing for the honest viewers, who get every line once and ``done``."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from tests.faults import figures
from tests.faults.cluster import FaultCluster, JobRow, is_terminal, now
from tests.faults.invariants import outcome
from tests.faults.viewers import Viewer
from tests.sse_client import iter_events

HONEST = 5
LINES = 150
INTERVAL = 0.03
FOLLOW_TIMEOUT = 60.0
BEYOND_THE_END = "999999999"


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


async def hold_stream(client: httpx.AsyncClient, job_id: str, answered: asyncio.Event) -> int:
    """Open the job's stream from beyond its end and read it until cancelled; the HTTP status."""
    headers = {"Last-Event-ID": BEYOND_THE_END}
    async with client.stream("GET", f"/jobs/stream/{job_id}", headers=headers) as response:
        answered.set()
        if response.status_code == 200:
            async for _ in iter_events(response):
                pass
        return response.status_code


async def test_a_viewer_resuming_beyond_the_end_changes_nothing_for_the_others(
    cluster: FaultCluster,
) -> None:
    """A viewer resuming past the stream's end leaves the others' streams complete."""
    job = await cluster.submit("free", lines=LINES, interval=INTERVAL)
    assert await cluster.wait_stored(job.id, 1, 60) >= 1
    problems: list[str] = []
    viewers = [Viewer(job.id) for _ in range(HONEST)]
    started = now()
    ended = None
    row: JobRow | None = None
    async with httpx.AsyncClient(
        base_url=cluster.base_url, timeout=httpx.Timeout(30, read=None)
    ) as client:
        answered = asyncio.Event()
        hostile = asyncio.create_task(hold_stream(client, job.id, answered))
        try:
            async with asyncio.timeout(30):
                await answered.wait()
            tasks = [asyncio.create_task(v.follow(client)) for v in viewers]
            try:
                async with asyncio.timeout(FOLLOW_TIMEOUT):
                    await asyncio.gather(*tasks)
                ended = now() - started
            except TimeoutError:
                problems.append(
                    f"{sum(v.dones == 0 for v in viewers)} of {HONEST} honest clients never "
                    f"got done within {FOLLOW_TIMEOUT:.0f} s"
                )
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            row = await cluster.wait_job(job.id, is_terminal, 30)
            lines = len(job.run().lines)
            for n, viewer in enumerate(viewers, 1):
                problems += viewer.problems(n, lines)
        finally:
            hostile.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await hostile
            figures.record(
                figures.Figure(
                    fault=f"a viewer resumes beyond the stream's end first; {HONEST} honest ones",
                    outcome=outcome(row),
                    printed=len(job.run().lines),
                    stored=await cluster.stored_count(job.id),
                    recovery_s=None,
                    terminal_s=ended,
                    holds=not problems,
                    note="; ".join(
                        [
                            f"honest clients complete: {sum(v.dones == 1 for v in viewers)}"
                            f"/{HONEST}",
                            *problems[:3],
                        ]
                    ),
                )
            )
    assert not problems, "\n".join(problems)
