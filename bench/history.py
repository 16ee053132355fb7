"""History figures: GET /api/jobs latency at 100,000 jobs, download speed of a 1,000,000-line log,
replay speed in events per second.

    .venv/bin/python -m bench.history                  # 100,000 jobs, a 1,000,000-line log
    .venv/bin/python -m bench.history --jobs 10000 --log-lines 100000   # a quick run

Self-contained: starts its own embedded NATS and Postgres in a temporary directory, publishes the
history straight to JetStream (what runners would have published), lets the projector build the
read models, runs the API as its own process (``jobrunner api``) and measures over real HTTP.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import new_scratch_dir
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.projector.replay import replay
from jobrunner.services.projector.service import run_projector

TYPES = ["scraper", "enrich_email", "enrich_search", "blacklist_sync"]
ENDINGS = [JobStatus.COMPLETED] * 6 + [JobStatus.FAILED] * 2 + [JobStatus.CANCELLED]
START = datetime(2025, 1, 1, tzinfo=UTC)


def history(n_jobs: int) -> list[events.Event]:
    rng = random.Random(5)
    out: list[events.Event] = []
    for i in range(n_jobs):
        job_id = f"job{i:07d}"
        at = START + timedelta(seconds=i * 30)
        job_type = rng.choice(TYPES)
        out.append(
            events.JobRequested(
                job_id=job_id,
                job_type=job_type,
                parameters={"plz_filter": str(rng.randint(0, 99999)), "headless": True},
                batch_id=f"batch{i // 100}" if i % 3 == 0 else None,
                occurred_at=at,
            )
        )
        if i >= n_jobs - 20:
            continue  # the newest few stay pending
        out.append(events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING, occurred_at=at))
        ending = rng.choice(ENDINGS)
        out.append(
            events.StatusChanged(
                job_id=job_id,
                event_id=events.terminal_event_id(job_id),
                status=ending,
                exit_code=0 if ending == JobStatus.COMPLETED else 1,
                result={"found": rng.randint(0, 500), "domain": f"site{i}.example"},
                occurred_at=at + timedelta(seconds=rng.randint(5, 600)),
            )
        )
    return out


def big_log(job_id: str, lines: int, batch: int = 1000) -> list[events.Event]:
    out: list[events.Event] = [
        events.JobRequested(job_id=job_id, job_type="scraper", occurred_at=START),
        events.StatusChanged(job_id=job_id, status=JobStatus.RUNNING, occurred_at=START),
    ]
    for first in range(1, lines + 1, batch):
        out.append(
            events.LineLogged(
                job_id=job_id,
                lines=[
                    events.LogLine(
                        seq,
                        "stdout",
                        "INFO",
                        START + timedelta(milliseconds=seq),
                        f"[{seq}/{lines}] processed https://site{seq}.example/ in 12 ms",
                    )
                    for seq in range(first, min(first + batch, lines + 1))
                ],
            )
        )
    out.append(
        events.StatusChanged(
            job_id=job_id, event_id=events.terminal_event_id(job_id), status=JobStatus.COMPLETED
        )
    )
    return out


async def publish_all(settings: Settings, batch: list[events.Event]) -> int:
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "bench")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    last = 0
    for start in range(0, len(batch), 2000):
        last = await eventstore.publish_many(js, names, batch[start : start + 2000])
    await eventstore.close(nc)
    return last


async def wait_projected(url: str, seq: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        while True:
            try:
                if await conn.fetchval("SELECT last_seq FROM readmodel.checkpoint") >= seq:
                    return
            except asyncpg.UndefinedTableError:
                pass
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure_list(base: str, rounds: int) -> dict[str, dict[str, float]]:
    queries = {
        "newest 50": {},
        "status=failed,cancelled": {"status": "failed,cancelled"},
        "job_type+status": {"job_type": "enrich_search", "status": "completed"},
        "search in parameters/result": {"search": "site4242"},
        "batch_id": {"batch_id": "batch77"},
        "created range": {
            "created_from": "2025-01-10T00:00:00Z",
            "created_to": "2025-01-11T00:00:00Z",
        },
    }
    results: dict[str, dict[str, float]] = {}
    everything: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        # Deep pages: follow the cursor 20 pages in.
        cursor_times: list[float] = []
        params: dict[str, str] = {"limit": "50"}
        for _ in range(20):
            t0 = time.perf_counter()
            page = (await client.get("/api/jobs", params=params)).json()
            cursor_times.append(time.perf_counter() - t0)
            params["cursor"] = page["next_cursor"]
        for name, query in queries.items():
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                response = await client.get("/api/jobs", params=query)
                times.append(time.perf_counter() - t0)
                assert response.status_code == 200, response.text
            results[name] = {
                "median_ms": statistics.median(times) * 1000,
                "p99_ms": percentile(times, 0.99) * 1000,
                "items": len(response.json()["items"]),
            }
            everything += times
        results["cursor pages 1-20"] = {
            "median_ms": statistics.median(cursor_times) * 1000,
            "p99_ms": percentile(cursor_times, 0.99) * 1000,
        }
        results["ALL"] = {
            "median_ms": statistics.median(everything) * 1000,
            "p99_ms": percentile(everything, 0.99) * 1000,
        }
    return results


async def measure_download(base: str, job_id: str) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        t0 = time.perf_counter()
        size = lines = 0
        async with client.stream("GET", f"/api/jobs/{job_id}/logs/download") as response:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                lines += chunk.count(b"\n")
        seconds = time.perf_counter() - t0
    return {
        "lines": lines,
        "mb": size / 1e6,
        "seconds": seconds,
        "lines_per_s": lines / seconds,
        "mb_per_s": size / 1e6 / seconds,
    }


async def explain(url: str) -> str:
    from jobrunner.services.api.readmodels import SEARCH_EXPRESSION

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            f"EXPLAIN ANALYZE SELECT id FROM readmodel.jobs WHERE {SEARCH_EXPRESSION} "
            "ILIKE '%site4242%' ORDER BY created_at DESC, id DESC LIMIT 51"
        )
    finally:
        await conn.close()
    return "\n".join(r[0] for r in rows)


async def main(args: argparse.Namespace) -> dict[str, object]:
    root = new_scratch_dir("jobrunner-bench-history-")
    nats_server = EmbeddedNats(root / "nats")
    postgres = EmbeddedPostgres(root / "pg", database="jobrunner")
    await asyncio.to_thread(nats_server.start)
    await asyncio.to_thread(postgres.start)
    settings = Settings(nats_url=nats_server.url, database_url=postgres.url, prefix="bench")
    report: dict[str, object] = {"jobs": args.jobs, "log_lines": args.log_lines}
    api = None
    try:
        print(f"publishing {args.jobs} jobs and a {args.log_lines}-line log ...", flush=True)
        batch = history(args.jobs) + big_log("biglog", args.log_lines)
        t0 = time.perf_counter()
        last = await publish_all(settings, batch)
        report["events"] = last
        report["publish_s"] = time.perf_counter() - t0
        stop = asyncio.Event()
        projector = asyncio.create_task(run_projector(settings, stop))
        t0 = time.perf_counter()
        await wait_projected(settings.database_url, last)
        report["live_projection_events_per_s"] = last / (time.perf_counter() - t0)
        print(f"projected {last} events", flush=True)

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
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        report["list"] = await measure_list(base, args.rounds)
        report["search_plan"] = await explain(settings.database_url)
        report["download"] = await measure_download(base, "biglog")

        print("replaying ...", flush=True)
        done = await replay(
            settings,
            on_progress=lambda p: print(
                f"  replay {p.done}/{p.target} events, {p.rate:,.0f}/s", flush=True
            ),
        )
        report["replay"] = {
            "events": done.events,
            "seconds": done.seconds,
            "events_per_s": done.rate,
            "identical": not done.differences,
        }
        stop.set()
        await projector
    finally:
        if api is not None:
            api.terminate()
            api.wait(10)
        await asyncio.to_thread(nats_server.stop)
        await asyncio.to_thread(postgres.stop)
        shutil.rmtree(root, ignore_errors=True)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--log-lines", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=100, help="requests per list query")
    parser.add_argument("--out", help="write the figures as JSON here too")
    result = asyncio.run(main(parser.parse_args()))
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if parser.parse_args().out:
        Path(parser.parse_args().out).write_text(text)
