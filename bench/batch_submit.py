"""How long ``POST /api/jobs/batch`` takes to answer 201, for batches of 1,000 and 10,000 jobs.

    .venv/bin/python -m bench.batch_submit                   # 1,000 and 10,000 jobs, 5 runs each
    .venv/bin/python -m bench.batch_submit --sizes 1000 --runs 3

Self-contained: starts its own embedded NATS and Postgres, then the projector and the API as
``python -m jobrunner.cli`` processes (no runner: the jobs stay pending, so running them does not
load the machine while it is measured). Each run posts a new batch and times the request from
sending to the 201, which comes once BatchSealed is stored, after the API waited (at most 2 s)
for the projector to have applied it (read-your-writes, as for POST /api/jobs); the projector's
own catch-up is timed too: until the read model shows every job of the batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from jobrunner.common.settings import ENV_PREFIX, Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def env_of(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name, value in msgspec.to_builtins(settings).items():
        env[ENV_PREFIX + name.upper()] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return env


def batch(size: int, run: int) -> dict[str, Any]:
    # The default job types: mixed, with parameters as a user would give them.
    kinds = [
        ("enrich_email", {}),
        ("scraper", {}),
        ("enrich_search", {"plz_filter": "80"}),
    ]
    return {
        "batch_name": f"bench {size} #{run}",
        "jobs": [{"job_type": kinds[i % 3][0], "parameters": kinds[i % 3][1]} for i in range(size)],
    }


async def wait_pending(database_url: str, batch_id: str, size: int) -> None:
    conn = await asyncpg.connect(database_url)
    query = "SELECT count(*) FROM readmodel.jobs WHERE batch_id = $1"
    try:
        async with asyncio.timeout(300):
            while await conn.fetchval(query, batch_id) < size:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # another process writes it: poll
    finally:
        await conn.close()


async def measure(base_url: str, database_url: str, sizes: list[int], runs: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        # One small batch first: connections, caches and the projector warmed up.
        assert (await client.post("/api/jobs/batch", json=batch(10, 0))).status_code == 201
        for size in sizes:
            to_201: list[float] = []
            to_projected: list[float] = []
            for run in range(1, runs + 1):
                body = json.dumps(batch(size, run)).encode()
                started = time.perf_counter()
                response = await client.post(
                    "/api/jobs/batch", content=body, headers={"Content-Type": "application/json"}
                )
                answered = time.perf_counter()
                assert response.status_code == 201, response.text[:500]
                await wait_pending(database_url, response.json()["batch_id"], size)
                to_201.append(answered - started)
                to_projected.append(time.perf_counter() - started)
                print(
                    f"{size} jobs, run {run}: 201 after {to_201[-1]:.3f} s, all in the read "
                    f"model after {to_projected[-1]:.3f} s ({len(body) / 1e6:.2f} MB body)",
                    file=sys.stderr,
                )
            results[str(size)] = {
                "runs": runs,
                "to_201_median_s": round(statistics.median(to_201), 3),
                "to_201_s": [round(t, 3) for t in to_201],
                "all_projected_median_s": round(statistics.median(to_projected), 3),
                "body_bytes": len(body),
            }
    return results


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with scratch_dir("jobrunner-bench-batch-submit-") as root:
        nats = EmbeddedNats(root / "nats")
        postgres = EmbeddedPostgres(
            root / "pg" / "data", settings=POSTGRES_SETTINGS, database="jobrunner"
        )
        processes: list[subprocess.Popen[bytes]] = []
        await asyncio.to_thread(nats.start)
        await asyncio.to_thread(postgres.start)  # it runs an event loop of its own
        try:
            port = free_port()
            settings = Settings(
                nats_url=nats.url,
                database_url=postgres.url,
                prefix="bench",
                state_dir=str(root / "state"),
                port=port,
                auth=False,
                log_format="json",
                log_level="warning",
            )
            for service in ("projector", "api"):
                log = (root / f"{service}.log").open("wb")
                processes.append(
                    subprocess.Popen(  # noqa: ASYNC220 - starting is quick
                        [sys.executable, "-m", "jobrunner.cli", service],
                        cwd=ROOT,
                        env=env_of(settings),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            base_url = f"http://127.0.0.1:{port}"
            async with asyncio.timeout(60):
                while True:
                    try:
                        async with httpx.AsyncClient(base_url=base_url) as client:
                            if (await client.get("/health")).status_code == 200:
                                break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.1)
            return {
                "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
                "nproc": os.cpu_count(),
                "sizes": await measure(base_url, postgres.url, args.sizes, args.runs),
            }
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                await asyncio.to_thread(process.wait, 30)
            await asyncio.to_thread(postgres.stop)
            await asyncio.to_thread(nats.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.batch_submit")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--runs", type=int, default=5)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
