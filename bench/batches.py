"""Batch figures: GET /api/batches latency over 10,000 batches, and the counter lag (the last job
of a batch ended and stored -> the batch row, and its ``batch_update`` SSE event, say completed).

    .venv/bin/python -m bench.batches                          # 10,000 batches, 5 x 1,000-job lag
    .venv/bin/python -m bench.batches --batches 1000 --lag-rounds 2      # a quick run

Self-contained like ``bench.history``: its own embedded NATS and Postgres, the history published
straight to JetStream (what the API and runners would have published), the projector in this
process and the API as its own process (``jobrunner api``), measured over real HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.history import START, TYPES, percentile, publish_all, wait_projected
from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import new_scratch_dir
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.projector.service import run_projector

JOBS_PER_BATCH = 3
ENDINGS = [JobStatus.COMPLETED] * 6 + [JobStatus.FAILED] * 2 + [JobStatus.CANCELLED]


def batch_history(n_batches: int) -> list[Any]:
    """``n_batches`` batches of three jobs a minute apart; most ended, some running or pending,
    one in ten archived, one in twenty failed by hand."""
    rng = random.Random(13)
    out: list[Any] = []
    for b in range(n_batches):
        batch_id = f"batch{b:06d}"
        at = START + timedelta(minutes=b)
        types = sorted(rng.sample(TYPES, 2))
        out.append(
            events.BatchRequested(
                batch_id=batch_id,
                batch_name=f"Import {b} {rng.choice(['Berlin', 'Hamburg', 'Köln', 'München'])}",
                total_jobs=JOBS_PER_BATCH,
                job_types=types,
                requested_by=rng.choice(["alice", "bob", "ci"]),
                occurred_at=at,
            )
        )
        for i in range(JOBS_PER_BATCH):
            job_id = f"{batch_id}-{i}"
            out.append(
                events.JobRequested(
                    job_id=job_id,
                    job_type=types[i % 2],
                    parameters={"plz_filter": str(rng.randint(0, 99999))},
                    batch_id=batch_id,
                    batch_index=i,
                    occurred_at=at,
                )
            )
        out.append(events.BatchSealed(batch_id=batch_id, total_jobs=JOBS_PER_BATCH, occurred_at=at))
        if b >= n_batches - 20:
            continue  # the newest stay pending
        for i in range(JOBS_PER_BATCH):
            job_id = f"{batch_id}-{i}"
            out.append(
                events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING, occurred_at=at)
            )
            if b >= n_batches - 100 and i == 0:
                continue  # a few still run
            out.append(
                events.StatusChanged(
                    job_id=job_id,
                    event_id=events.terminal_event_id(job_id),
                    status=rng.choice(ENDINGS),
                    occurred_at=at + timedelta(seconds=30),
                )
            )
        if b % 10 == 0:
            out.append(events.BatchArchived(batch_id=batch_id, occurred_at=at))
        if b % 20 == 1:
            out.append(events.BatchFailed(batch_id=batch_id, reason="stopped", occurred_at=at))
    return out


QUERIES: dict[str, dict[str, str]] = {
    "newest 50": {},
    "status=failed": {"status": "failed"},
    "status=running,pending": {"status": "running,pending"},
    "archived=true": {"archived": "true"},
    "archived=all": {"archived": "all"},
    "job_type": {"job_type": "enrich_email"},
    "search in name": {"search": "Köln"},
    "search, one match": {"search": "Import 4242 "},
    "created range": {
        "created_from": (START + timedelta(days=2)).isoformat(),
        "created_to": (START + timedelta(days=3)).isoformat(),
    },
}


async def measure_list(base: str, rounds: int, batches: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    everything: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        cursor_times: list[float] = []
        params: dict[str, str] = {"limit": "50"}
        for _ in range(20):  # deep pages: follow the cursor 20 pages in
            t0 = time.perf_counter()
            page = (await client.get("/api/batches", params=params)).json()
            cursor_times.append(time.perf_counter() - t0)
            params["cursor"] = page["next_cursor"]
        for name, query in QUERIES.items():
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                response = await client.get("/api/batches", params=query)
                times.append(time.perf_counter() - t0)
                assert response.status_code == 200, response.text
            results[name] = {
                "median_ms": statistics.median(times) * 1000,
                "p99_ms": percentile(times, 0.99) * 1000,
                "items": len(response.json()["items"]),
            }
            everything += times
        detail = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            response = await client.get(f"/api/batches/batch{batches // 2:06d}")
            detail.append(time.perf_counter() - t0)
            assert response.status_code == 200, response.text
        results["GET /api/batches/{id}"] = {
            "median_ms": statistics.median(detail) * 1000,
            "p99_ms": percentile(detail, 0.99) * 1000,
        }
        results["cursor pages 1-20"] = {
            "median_ms": statistics.median(cursor_times) * 1000,
            "p99_ms": percentile(cursor_times, 0.99) * 1000,
        }
        everything += cursor_times
        results["ALL list queries"] = {
            "median_ms": statistics.median(everything) * 1000,
            "p99_ms": percentile(everything, 0.99) * 1000,
        }
    return results


async def counter_lag(settings: Settings, base: str, batch_id: str, jobs: int) -> dict[str, float]:
    """Publish a ``jobs``-job batch, start every job, then end them all at once: seconds from
    the last ending's ack (stored in JetStream) to the batch row, and to the ``batch_update``
    event, saying completed."""
    names = Names(settings.prefix)
    ids = [f"{batch_id}-{i}" for i in range(jobs)]
    setup: list[Any] = [
        events.BatchRequested(batch_id=batch_id, batch_name="lag", total_jobs=jobs),
        *(
            events.JobRequested(job_id=j, job_type="scraper", batch_id=batch_id, batch_index=i)
            for i, j in enumerate(ids)
        ),
        events.BatchSealed(batch_id=batch_id, total_jobs=jobs),
        *(events.StatusChanged(job_id=j, status=JobStatus.RUNNING) for j in ids),
    ]
    await wait_projected(settings.database_url, await publish_all(settings, setup))
    endings = [
        events.StatusChanged(
            job_id=j, event_id=events.terminal_event_id(j), status=JobStatus.COMPLETED
        )
        for j in ids
    ]
    sse_done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    started = asyncio.Event()

    async def watch() -> None:
        async with (
            httpx.AsyncClient(base_url=base, timeout=None) as client,
            client.stream("GET", "/api/jobs/stream") as response,
        ):
            started.set()  # the stream's start is fixed once it has answered
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "batch_update":
                    data = json.loads(line[6:])
                    if data["id"] == batch_id and data["status"] == "completed":
                        sse_done.set_result(time.perf_counter())
                        return

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(started.wait(), 30)
    conn = await asyncpg.connect(settings.database_url)
    nc = await eventstore.connect(settings, "bench")
    try:
        await eventstore.publish_many(nc.jetstream(), names, endings)
        stored = time.perf_counter()
        while True:
            status = await conn.fetchval(
                "SELECT status FROM readmodel.batches WHERE id = $1", batch_id
            )
            if status == "completed":
                row_at = time.perf_counter()
                break
            await asyncio.sleep(0.002)
        sse_at = await asyncio.wait_for(sse_done, 60)
    finally:
        watcher.cancel()
        await conn.close()
        await eventstore.close(nc)
    return {"row_s": row_at - stored, "sse_s": sse_at - stored}


async def main(args: argparse.Namespace) -> dict[str, object]:
    root = new_scratch_dir("jobrunner-bench-batches-")
    nats_server = EmbeddedNats(root / "nats")
    postgres = EmbeddedPostgres(root / "pg", database="jobrunner")
    await asyncio.to_thread(nats_server.start)
    await asyncio.to_thread(postgres.start)
    settings = Settings(nats_url=nats_server.url, database_url=postgres.url, prefix="bench")
    report: dict[str, object] = {"batches": args.batches}
    api = None
    stop = asyncio.Event()
    projector = None
    try:
        history = batch_history(args.batches)
        t0 = time.perf_counter()
        last = await publish_all(settings, history)
        report["events"] = last
        report["publish_s"] = time.perf_counter() - t0
        projector = asyncio.create_task(run_projector(settings, stop))
        t0 = time.perf_counter()
        await wait_projected(settings.database_url, last)
        report["projection_events_per_s"] = last / (time.perf_counter() - t0)
        port = free_port()
        env = {
            **os.environ,
            "JOBRUNNER_NATS_URL": settings.nats_url,
            "JOBRUNNER_DATABASE_URL": settings.database_url,
            "JOBRUNNER_PREFIX": settings.prefix,
            "JOBRUNNER_PORT": str(port),
            "JOBRUNNER_AUTH": "false",
            "JOBRUNNER_LOG_LEVEL": "warning",
        }
        api = subprocess.Popen(  # noqa: ASYNC220 (started once, stopped at the end)
            [sys.executable, "-m", "jobrunner.cli", "api"], env=env
        )
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(300):
                try:
                    if (await client.get("/health")).status_code in (200, 503):
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        report["list"] = await measure_list(base, args.rounds, args.batches)
        lags = [
            await counter_lag(settings, base, f"lag{n}", args.lag_jobs)
            for n in range(args.lag_rounds)
        ]
        report["counter_lag"] = {
            "jobs": args.lag_jobs,
            "rounds": lags,
            "row_median_s": statistics.median(lag["row_s"] for lag in lags),
            "sse_median_s": statistics.median(lag["sse_s"] for lag in lags),
            "row_max_s": max(lag["row_s"] for lag in lags),
            "sse_max_s": max(lag["sse_s"] for lag in lags),
        }
    finally:
        stop.set()
        if projector is not None:
            await projector
        if api is not None:
            api.terminate()
            api.wait(10)
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(postgres.stop)
        shutil.rmtree(root, ignore_errors=True)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=100, help="requests per list query")
    parser.add_argument("--lag-jobs", type=int, default=1000, help="jobs of each lag batch")
    parser.add_argument("--lag-rounds", type=int, default=5)
    parser.add_argument("--out", help="write the figures as JSON here too")
    parsed = parser.parse_args()
    result = asyncio.run(main(parsed))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if parsed.out:
        Path(parsed.out).write_text(text)
