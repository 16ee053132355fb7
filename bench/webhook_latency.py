"""Webhook latency: from a job's end to its webhook arriving at a local receiver.

    .venv/bin/python -m bench.webhook_latency [--jobs 200]

Starts its own NATS and Postgres (as the tests do), the projector, a runner and the API in this
process, the notifier as ``python -m jobrunner.cli notifier`` (a process of its own, as in
production) and a receiver (uvicorn, in this process). Runs ``--jobs`` short jobs one after the
other, each naming the receiver as its webhook, and measures for each the time from the job's
stored end (``finished_at``, the terminal StatusChanged's time) to the receiver getting the POST
(the wall clock of one machine on both sides). Also the time from the end to the delivered attempt
being visible in ``GET /api/jobs/{id}/webhooks``.

Prints the figures and writes ``bench/results/webhook_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from jobrunner.common.settings import Settings
from jobrunner.embedded.scratch import scratch_dir
from tests.servers import PostgresCluster, nats_url, postgres_cluster
from tests.system import System
from tests.tools.runners import REPO, runner_env
from tests.webhook_receiver import running_receiver

ROOT = Path(__file__).resolve().parent.parent
JOB_TYPES = """
[job_types.quick]
argv = ["{python}", "tests/tools/emit.py", "--lines", "1"]
"""


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def measure(system: System, url: str, arrivals: dict[str, float], jobs: int) -> Any:
    to_receiver: list[float] = []
    to_log: list[float] = []
    async with system.client() as client:
        for _ in range(jobs):
            response = await client.post(
                "/api/jobs", json={"job_type": "quick", "webhook": {"url": url}}
            )
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
            async with asyncio.timeout(60):
                while job_id not in arrivals:  # noqa: ASYNC110 - the receiver fills it
                    await asyncio.sleep(0.002)
                while True:
                    log = (await client.get(f"/api/jobs/{job_id}/webhooks")).json()
                    if log["deliveries"] and log["deliveries"][0]["state"] == "delivered":
                        seen = time.time()
                        break
                    await asyncio.sleep(0.005)
            job = (await client.get(f"/api/jobs/{job_id}")).json()
            ended = _ts(job["finished_at"])
            to_receiver.append((arrivals[job_id] - ended) * 1000)
            to_log.append((seen - ended) * 1000)
    return to_receiver, to_log


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(values), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(max(values), 2),
        "min_ms": round(min(values), 2),
    }


async def main(args: argparse.Namespace, nats: str, pg: PostgresCluster) -> dict[str, Any]:
    with scratch_dir("jobrunner-bench-webhooks-") as tmp:
        types = tmp / "jobtypes.toml"
        types.write_text(JOB_TYPES)
        settings = Settings(
            nats_url=nats,
            database_url=await pg.fresh_database(),
            prefix=f"hook{uuid.uuid4().hex[:8]}",
            state_dir=str(tmp / "state"),
            job_types_file=str(types),
            webhook_secret="bench",
            webhook_allow_hosts="127.0.0.1",
            log_format="json",
            log_level="warning",
        )
        system = System(settings)
        await system.start()
        log_file = tmp / "notifier.log"
        with log_file.open("ab") as out:
            notifier = subprocess.Popen(  # noqa: ASYNC220 - starting is quick
                [sys.executable, "-m", "jobrunner.cli", "notifier"],
                cwd=REPO,
                env=runner_env(settings),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            async with asyncio.timeout(60):
                while b"notifier started" not in log_file.read_bytes():
                    assert notifier.poll() is None, log_file.read_text()
                    await asyncio.sleep(0.05)
            arrivals: dict[str, float] = {}
            async with running_receiver() as receiver:

                def note(n: int) -> int:
                    body = json.loads(receiver.received[n - 1].body)
                    arrivals[body["job_id"]] = receiver.received[n - 1].wall
                    return 200

                receiver.answer = note
                await measure(system, receiver.url, arrivals, min(5, args.jobs))  # warm-up
                to_receiver, to_log = await measure(system, receiver.url, arrivals, args.jobs)
        finally:
            notifier.terminate()
            notifier.wait(30)
            await system.stop()
    return {
        "jobs": args.jobs,
        "end_to_receiver": summary(to_receiver),
        "end_to_delivered_in_api": summary(to_log),
    }


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_latency")
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    with nats_url() as nats, postgres_cluster() as pg:
        results = asyncio.run(main(args, nats, pg))
    out = ROOT / "bench" / "results" / "webhook_latency.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    cli()
