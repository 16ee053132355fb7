"""The runner's figures: cancel latency, SIGKILL-to-RUNNER_LOST time, memory under a flood.

    .venv/bin/python -m bench.runner_figures [--lines 1000000] [--repeat 5]

Starts its own NATS and Postgres (as the tests do), the projector and API in this process and
runners as ``python -m jobrunner.cli runner`` child processes, then measures:

- DELETE to ``cancelled``: from sending DELETE to the stored terminal event (``finished_at``) and
  to the API answering ``cancelled``; for a tool that obeys SIGTERM and for one whose grandchild
  ignores it (bounded by the type's grace period);
- SIGKILL of a runner process to the job's RUNNER_LOST, with the default lease TTL;
- the runner process's resident memory, sampled every 0.25 s while one job prints ``--lines``
  lines, and its peak (VmHWM). The tool is a separate process and is not counted.

Prints a table and writes ``bench/results/runner_figures.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from jobrunner.common.settings import Settings
from jobrunner.embedded.scratch import scratch_dir
from tests.servers import PostgresCluster, nats_url, postgres_cluster
from tests.system import System
from tests.tools.runners import RunnerProcess, start_job, wait_status

ROOT = Path(__file__).resolve().parent.parent

JOB_TYPES = """
[job_types.obedient]
argv = ["{{python}}", "tests/tools/emit.py", "--lines", "100000", "--interval", "0.05"]
cancel_grace_seconds = 10

[job_types.family]
argv = ["{{python}}", "tests/tools/family.py", "--pidfile", "{pidfile}"]
cancel_grace_seconds = {grace}

[job_types.flood]
argv = ["{{python}}", "-m", "bench.tools.flood"]
timeout_seconds = 3600

[job_types.flood.parameters.lines]
type = "integer"
flag = "--lines"
default = 1000000
"""


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def _rss_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


async def cancel_latency(system: System, job_type: str, repeat: int) -> dict[str, Any]:
    stored, visible = [], []
    async with system.client() as client:
        for _ in range(repeat):
            job_id = await start_job(client, job_type)
            await wait_status(client, job_id, "running")
            await asyncio.sleep(0.3)  # let the tool get going, as a user would
            t0 = time.time()
            response = await client.delete(f"/api/jobs/{job_id}")
            assert response.status_code == 202, response.text
            job = await wait_status(client, job_id, "cancelled", "failed", "completed")
            visible.append(time.time() - t0)
            stored.append(_ts(job["finished_at"]) - t0)
            assert job["status"] == "cancelled", job
    return {
        "stored_median_s": round(statistics.median(stored), 3),
        "stored_max_s": round(max(stored), 3),
        "visible_median_s": round(statistics.median(visible), 3),
        "visible_max_s": round(max(visible), 3),
        "runs": repeat,
    }


async def runner_lost(settings: Settings, system: System, tmp: Path, repeat: int) -> dict[str, Any]:
    durations = []
    async with system.client() as client:
        for i in range(repeat):
            doomed = RunnerProcess(settings, tmp / f"doomed{i}.log", runner_id=f"doomed{i}")
            survivor = RunnerProcess(settings, tmp / f"survivor{i}.log", runner_id=f"survivor{i}")
            await doomed.start()
            try:
                job_id = await start_job(client, "family")
                await wait_status(client, job_id, "running")  # on the only runner: doomed
                await survivor.start()
                t0 = time.time()
                doomed.kill()
                job = await wait_status(client, job_id, "failed", "completed", timeout=120)
            finally:
                doomed.stop()
                survivor.stop()
            assert job["error"]["code"] == "RUNNER_LOST", job
            durations.append(_ts(job["finished_at"]) - t0)
    return {
        "lease_ttl_s": settings.lease_ttl_seconds,
        "median_s": round(statistics.median(durations), 3),
        "max_s": round(max(durations), 3),
        "min_s": round(min(durations), 3),
        "runs": repeat,
    }


async def memory(settings: Settings, system: System, tmp: Path, lines: int) -> dict[str, Any]:
    runner = RunnerProcess(settings, tmp / "flood-runner.log", runner_id="flood")
    await runner.start()
    samples: list[int] = []
    try:
        async with system.client() as client:
            job_id = await start_job(client, "flood", lines=lines)
            started = time.time()
            while True:
                samples.append(_rss_kib(runner.pid)["VmRSS"])
                job = (await client.get(f"/api/jobs/{job_id}")).json()
                if job["status"] not in ("pending", "running"):
                    break
                await asyncio.sleep(0.25)
            peak = _rss_kib(runner.pid)["VmHWM"]
            seconds = time.time() - started
    finally:
        runner.stop()
    assert job["status"] == "completed", job
    n = len(samples)
    return {
        "lines": lines,
        "log_count": job["log_count"],
        "seconds": round(seconds, 1),
        "rss_first_mib": round(samples[0] / 1024, 1),
        "rss_median_mib": round(statistics.median(samples) / 1024, 1),
        "rss_max_mib": round(max(samples) / 1024, 1),
        "rss_last_quarter_median_mib": round(statistics.median(samples[3 * n // 4 :]) / 1024, 1),
        "rss_first_quarter_median_mib": round(
            statistics.median(samples[: max(1, n // 4)]) / 1024, 1
        ),
        "peak_vmhwm_mib": round(peak / 1024, 1),
        "samples": n,
    }


async def main(args: argparse.Namespace, nats: str, pg: PostgresCluster) -> dict[str, Any]:
    with scratch_dir("jobrunner-bench-runner-") as tmp:
        return await _measure(args, nats, pg, tmp)


async def _measure(
    args: argparse.Namespace, nats: str, pg: PostgresCluster, tmp: Path
) -> dict[str, Any]:
    pidfile = tmp / "family.pids"
    types = tmp / "jobtypes.toml"
    types.write_text(JOB_TYPES.format(pidfile=pidfile, grace=args.grace))
    results: dict[str, Any] = {}
    settings = Settings(
        nats_url=nats,
        database_url=await pg.fresh_database(),
        prefix=f"fig{uuid.uuid4().hex[:8]}",
        state_dir=str(tmp / "state"),
        job_types_file=str(types),
        lease_ttl_seconds=args.lease_ttl,
        log_format="json",
        log_level="warning",
    )
    system = System(settings)
    await system.start_projector()
    await system.start_api()
    try:
        await system.start_runner("figures-runner", runner_id="inproc")
        results["cancel_obedient_tool"] = await cancel_latency(system, "obedient", args.repeat)
        results["cancel_sigterm_deaf_grandchild"] = await cancel_latency(
            system, "family", args.repeat
        )
        results["cancel_sigterm_deaf_grandchild"]["grace_s"] = args.grace
        await system.stop_service("figures-runner")
        results["sigkill_to_runner_lost"] = await runner_lost(settings, system, tmp, args.repeat)
        results["runner_memory"] = await memory(settings, system, tmp, args.lines)
    finally:
        await system.stop()
    return results


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.runner_figures")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--lease-ttl", type=float, default=15.0, help="the default is 15 s")
    parser.add_argument("--grace", type=float, default=1.0, help="grace of the 'family' type")
    args = parser.parse_args()
    # The servers start outside the event loop (the embedded Postgres runs its own loop to set up).
    with nats_url() as nats, postgres_cluster() as pg:
        results = asyncio.run(main(args, nats, pg))
    out = ROOT / "bench" / "results" / "runner_figures.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    cli()
