"""The run loop of the NATS fault measurements (``bench/nats_restart.py``,
``bench/nats_restart_lost_ack.py``), written once; each passes its fault as ``strike``.

Per run: a job printing a line every ``INTERVAL`` on a lock of its own, followed by an SSE
viewer that notes when each line reached it; once the viewer has its first line and ``settle``
seconds passed, ``strike`` breaks NATS its own way and measures what it measures (most with
``WatchedJob.first_line_after``); then the viewer stops and the job is cancelled, and the next
run starts ``pause`` seconds later.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from tests.faults.cluster import FaultCluster
from tests.faults.toolrecord import ToolJob
from tests.faults.viewers import Viewer

INTERVAL = 0.05  # between the watched job's lines


def printed(job: ToolJob) -> dict[int, float]:
    """The tool's own record: line number to the wall-clock time it was written."""
    out = {}
    for line in job.record.read_text().splitlines():
        fact = line.split()
        if fact[0] == "line":
            out[int(fact[1])] = float(fact[2])
    return out


@dataclass
class WatchedJob:
    """The job under the fault, its viewer, and when each of its lines reached the viewer."""

    job: ToolJob
    viewer: Viewer
    following: asyncio.Task[None]  # the viewer's SSE stream, to the job's end
    received: list[tuple[int, float]] = field(default_factory=list)  # (line, wall-clock time)

    async def first_line_after(self, t0: float) -> float:
        """Wall-clock time the viewer got its first line the tool printed after ``t0``."""
        async with asyncio.timeout(60):
            while True:
                times = printed(self.job)
                after = [at for seq, at in self.received if times.get(seq, 0) > t0]
                if after:
                    return after[0]
                await asyncio.sleep(0.02)


@asynccontextmanager
async def watched_job(cluster: FaultCluster, settle: float) -> AsyncIterator[WatchedJob]:
    """A job printing lines, its viewer following it and past its first line, ``settle``
    seconds on; the viewer stopped and the job cancelled on exit."""
    job = await cluster.submit(cluster.fresh_lock_type(), 100_000, INTERVAL)
    viewer = Viewer(job.id)
    sse = httpx.AsyncClient(base_url=cluster.base_url, timeout=httpx.Timeout(30, read=120))
    watched = WatchedJob(job, viewer, asyncio.create_task(viewer.follow(sse)))

    async def note_arrivals() -> None:
        seen = 0
        while True:
            for seq in viewer.lines[seen:]:
                watched.received.append((seq, time.time()))
            seen = len(viewer.lines)
            await asyncio.sleep(0.005)

    noting = asyncio.create_task(note_arrivals())
    try:
        async with asyncio.timeout(60):
            await viewer.got_line.wait()
        await asyncio.sleep(settle)
        yield watched
    finally:
        noting.cancel()
        watched.following.cancel()
        await asyncio.gather(noting, watched.following, return_exceptions=True)
        await sse.aclose()
        await cluster.cancel(job.id)


# One run's fault and measurement: given the cluster, the watched job and the run's number.
Strike = Callable[[FaultCluster, WatchedJob, int], Awaitable[None]]


async def fault_runs(
    cluster: FaultCluster, runs: int, strike: Strike, settle: float, pause: float
) -> None:
    """``runs`` runs of ``strike``, each on a watched job of its own."""
    for run in range(runs):
        async with watched_job(cluster, settle) as watched:
            await strike(cluster, watched, run)
        await asyncio.sleep(pause)


def down_and_runs() -> tuple[float, int]:
    """The scripts' command line: ``[DOWN_SECONDS] [RUNS]`` (0 s and 3 runs when not given)."""
    down = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    return down, runs
