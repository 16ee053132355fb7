"""Figures for the capacity plan (docs/capacity.md) that the main bench does not give.

    .venv/bin/python -m bench.capacity [--jobs 1000] [--viewers 2000] [--viewer-jobs 8]

Starts jobrunner as users do (``jobrunner up``: one runner, one API, one projector) and measures:

- **jobs started per second by one runner**: a batch of ``--jobs`` one-line jobs (``echo``, no
  lock) is queued at once; from the first job's ``started_at`` to the last one's, in the read
  model, with the runner's peak memory;
- **SSE viewers per API process**: ``--viewers`` clients spread over ``--viewer-jobs`` jobs that
  print 5 lines/s each; the API's memory before and with them all connected (per viewer), the
  lines each got (every one, in order), and the delay from print to client;
- **GET /api/jobs from 8 clients at once** for 5 s (the main bench's reads use one client).

Prints a table and writes ``bench/results/capacity.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import asyncpg
import httpx

from bench.report import machine, summarize
from bench.scenarios import start_job, stream_path
from bench.sse import open_stream
from bench.system import ROOT, MemorySampler, RunningSystem

LINES_PER_SECOND = 5
LIST_CLIENTS = 8


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def jobs_started(system: RunningSystem, http: httpx.AsyncClient, jobs: int) -> dict[str, Any]:
    """One runner starting ``jobs`` queued one-line jobs, as fast as it takes them."""
    body = {"batch_name": "capacity", "jobs": [{"job_type": "bench_echo"}] * jobs}
    runner = {"runner": system.services()["runner"]}
    with MemorySampler(runner) as memory:
        response = await http.post("/api/jobs/batch", json=body, timeout=120)
        response.raise_for_status()
        batch_id = response.json()["batch_id"]
        db = await asyncpg.connect(system.runtime["database_url"])
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                row = await db.fetchrow(
                    "SELECT count(*) FILTER (WHERE finished_at IS NOT NULL) AS ended,"
                    " min(started_at) AS first, max(started_at) AS last,"
                    " count(*) FILTER (WHERE status = 'completed') AS completed"
                    " FROM readmodel.jobs WHERE batch_id = $1",
                    batch_id,
                )
                if row["ended"] == jobs:
                    break
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError(f"only {row['ended']} of {jobs} jobs ended within 600 s")
        finally:
            await db.close()
    span = (row["last"] - row["first"]).total_seconds()
    return {
        "jobs": jobs,
        "completed": row["completed"],
        "first_to_last_start_s": round(span, 2),
        "jobs_started_per_s": round((jobs - 1) / span, 1) if span > 0 else None,
        "runner_peak_rss_mib": memory.mib("runner"),
    }


async def viewers(
    system: RunningSystem, http: httpx.AsyncClient, clients: int, jobs: int
) -> dict[str, Any]:
    """``clients`` SSE viewers over ``jobs`` jobs printing 5 lines/s each."""
    seconds = 30
    api = system.services()["api"]
    rss_before = api.memory_info().rss
    delay = 5 + clients / 200  # the jobs start printing once every client is connected
    job_ids = [
        await start_job(
            http,
            "bench_paced",
            {"rate": LINES_PER_SECOND, "seconds": seconds, "delay": f"{delay:.1f}"},
        )
        for _ in range(jobs)
    ]
    started = time.monotonic()
    gate = asyncio.Semaphore(50)

    async def connect(n: int) -> Any:
        async with gate:
            path = stream_path(job_ids[n % jobs])
            return await open_stream("127.0.0.1", system.port, path, system.headers)

    with MemorySampler({"api": api}) as memory:
        streams = await asyncio.gather(*(connect(n) for n in range(clients)))
        connected_after = time.monotonic() - started
        rss_connected = api.memory_info().rss
        for i, stream in enumerate(streams):
            stream.record_delays = i % 10 == 0
        await asyncio.wait_for(asyncio.gather(*(s.done for s in streams)), seconds + delay + 180)
    expected = LINES_PER_SECOND * seconds
    complete = sum(1 for s in streams if s.lines == expected and not s.gaps and not s.duplicates)
    for stream in streams:
        stream.close()
    return {
        "viewers": clients,
        "jobs": jobs,
        "lines_per_s_out": clients * LINES_PER_SECOND,
        "viewers_complete": complete,
        "connected_within_s": round(connected_after, 2),
        "api_rss_mib_idle": round(rss_before / 2**20, 1),
        "api_rss_mib_connected": round(rss_connected / 2**20, 1),
        "api_peak_rss_mib": memory.mib("api"),
        "api_kib_per_viewer": round((rss_connected - rss_before) / clients / 1024, 1),
        **summarize([d for s in streams for d in s.delays]),
    }


async def list_requests(http: httpx.AsyncClient, seconds: float = 5.0) -> dict[str, Any]:
    """``GET /api/jobs?limit=50`` from 8 clients at once for ``seconds``."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    t_end = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < t_end:
            t = time.monotonic()
            response = await http.get("/api/jobs", params={"limit": 50})
            latencies.append(time.monotonic() - t)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    await asyncio.gather(*(client() for _ in range(LIST_CLIENTS)))
    return {
        "clients": LIST_CLIENTS,
        "requests_per_s": round(len(latencies) / seconds),
        "statuses": statuses,
        **summarize(latencies),
    }


async def measure(system: RunningSystem, args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=system.base_url,
        headers=system.headers,
        timeout=60,
        limits=httpx.Limits(max_connections=LIST_CLIENTS * 2),
    ) as http:
        log(f"runner: {args.jobs} queued one-line jobs")
        started = await jobs_started(system, http, args.jobs)
        log(f"api: {args.viewers} SSE viewers over {args.viewer_jobs} jobs")
        watched = await viewers(system, http, args.viewers, args.viewer_jobs)
        log(f"api: GET /api/jobs from {LIST_CLIENTS} clients")
        listed = await list_requests(http)
    return {"runner": started, "viewers": watched, "list_jobs": listed}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--viewers", type=int, default=2000)
    # At most max_concurrent_jobs (8): the one runner runs them all at once.
    parser.add_argument("--viewer-jobs", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine()}
    system = RunningSystem({"JOBRUNNER_MAX_STREAMS_PER_TOKEN": str(args.viewers + 100)})
    try:
        system.start()
        results.update(asyncio.run(measure(system, args)))
    finally:
        system.stop()
    path = ROOT / "bench" / "results" / "capacity.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
