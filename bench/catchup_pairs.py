"""Pairs of catch-up runs, this tree against another (main), alternating, on one noisy host.

What session 41 measured the held flow-control answer with (bench/RESULTS.md): rows 3c and 4b
without the rest of the suite. One side is a fresh ``jobrunner up`` (``bench.system``) that
publishes a smaller history (``--jobs`` jobs, ten events each), reads ``/api/jobs/stream?after=0``
twice (``catchup.updates_from_start``), floods ``--lines`` lines (1,000,000:
``scenarios.throughput``, row 3c) and reads that job's stream from its start three times
(``catchup.job_from_start``, row 4b).

    # pairs: this tree, then the base tree, ``--pairs`` times; one JSON line a side on stdout
    PYTHONPATH=$PWD .venv/bin/python -m bench.catchup_pairs --base /work/wt/x_base --pairs 4
    # one side, in the tree on PYTHONPATH (what each side of a pair runs)
    PYTHONPATH=$PWD .venv/bin/python -m bench.catchup_pairs --side

Each side runs this file by its path with ``PYTHONPATH`` set to its tree, so the base tree
needs no copy of it: its ``bench`` and ``jobrunner`` are what the side imports. Each line says
the side, its tree, its start time and the host's load average at its start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

JOB_READS = 3
UPDATE_READS = 2


async def measure(system: Any, jobs: int, lines: int) -> dict[str, Any]:
    import httpx

    from bench import catchup, scenarios, settle

    out: dict[str, Any] = {"updates_events_per_s": []}
    if jobs:
        await publish_history(system, jobs)
        await settle.settle(system, "catch-up")
        for _ in range(UPDATE_READS):
            read = await catchup.updates_from_start(system)
            out["updates_events_per_s"].append(read["stream_events_per_s"])
    await settle.settle(system, "throughput")
    async with httpx.AsyncClient(
        base_url=system.base_url, headers=system.headers, timeout=60
    ) as http:
        flood = await scenarios.throughput(system, http, lines)
    out["throughput"] = flood
    out["job_stream"] = []
    for _ in range(JOB_READS):
        read = await catchup.job_from_start(system, flood["job_id"], lines)
        out["job_stream"].append(
            {k: read[k] for k in ("lines", "gaps", "duplicates", "lines_per_s")}
        )
    return out


async def publish_history(system: Any, jobs: int) -> None:
    """``jobs`` jobs' events, waited for until the projector applied the last one."""
    from bench import history, workload
    from jobrunner.common import eventstore
    from jobrunner.common.settings import Settings
    from jobrunner.contracts.names import Names

    settings = Settings(nats_url=system.runtime["nats_url"], prefix=system.prefix)
    nc = await eventstore.connect(settings, "bench")
    try:
        published = await workload.publish_history(nc.jetstream(), Names(system.prefix), jobs)
    finally:
        await eventstore.close(nc)
    await history.wait_projected(system.runtime["database_url"], published["last_seq"])


def one_side(jobs: int, lines: int) -> dict[str, Any]:
    from bench.system import RunningSystem

    system = RunningSystem()
    system.start()
    try:
        return asyncio.run(measure(system, jobs, lines))
    finally:
        system.stop()


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def side_options(jobs: int, lines: int) -> list[str]:
    return ["--jobs", str(jobs), "--lines", str(lines)]


def run_side(tree: Path, jobs: int, lines: int) -> dict[str, Any]:
    """One side in ``tree``, in a process of its own (a fresh import of that tree's code)."""
    started, load_before = time.strftime("%H:%M:%S", time.gmtime()), load()
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--side", *side_options(jobs, lines)],
        cwd=tree,
        env=os.environ | {"PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    result = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else None
    return {
        "tree": str(tree),
        "start_utc": started,
        "load": f"{load_before} -> {load()}",
        "result": result,
        "error": done.stderr[-2000:] if done.returncode else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", action="store_true", help="one side, in this process")
    parser.add_argument("--base", type=Path, help="the tree to pair this one with (main)")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=20_000, help="history jobs (0: none)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="the flood's lines")
    options = parser.parse_args()
    if options.side:
        print(json.dumps(one_side(options.jobs, options.lines), default=str))
        return
    if options.base is None:
        parser.error("--base is required for pairs")
    this = Path(__file__).resolve().parent.parent
    for pair in range(1, options.pairs + 1):
        for side, tree in (("this", this), ("base", options.base.resolve())):
            measured = run_side(tree, options.jobs, options.lines)
            print(json.dumps({"pair": pair, "side": side} | measured, default=str), flush=True)


if __name__ == "__main__":
    main()
