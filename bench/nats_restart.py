"""How long after a NATS restart each part works again, as a user sees it.

``PYTHONPATH=$PWD python -m bench.nats_restart [DOWN_SECONDS] [RUNS]`` starts the fault suite's
cluster (tests/faults/cluster.py: nats-server, Postgres, projector, two runners, API as separate
processes), and for each run: a job printing a line every 50 ms followed by an SSE viewer,
nats-server SIGKILLed, down ``DOWN_SECONDS``, started again on the same port and store. Printed
per run, in seconds after the restart returned: ``/health`` 200, a job's ``GET`` 200, a new
``POST /api/jobs`` answered 201 (it waits for the read models, up to 2 s), the new job's tool
started, the new job running in the read models, the tool of a job of a lock (its queue type,
the lock free) submitted then started, and the first line printed after the restart at the
viewer. Then each service's log lines since the kill, timed the same way. Not part of
``python -m bench``'s scenarios: it measures a fault, one cluster per call. The run loop is
``bench/faultruns.py``'s; the fault here is ``restart_and_probe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import time

import httpx

from bench.faultruns import WatchedJob, down_and_runs, fault_runs
from tests.faults.cluster import FaultCluster, running_cluster
from tests.faults.toolrecord import ToolJob

LOG_LINES_SHOWN = 40


async def first_ok(
    cluster: FaultCluster, method: str, path: str, body: object = None
) -> tuple[float, httpx.Response]:
    """Wall-clock time of the first 2xx answer to the request (sent again every 50 ms), and it."""
    async with asyncio.timeout(60):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                async with cluster.client() as client:
                    response = await client.request(method, path, json=body)
                if response.is_success:
                    return time.time(), response
            await asyncio.sleep(0.05)


async def started_at(job: ToolJob) -> float:
    """Wall-clock time the job's tool started (its own record)."""
    async with asyncio.timeout(60):
        while not job.record.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    return float(job.record.read_text().split()[1])


def logged_since(cluster: FaultCluster, offsets: dict[str, int], t0: float) -> None:
    for name, service in cluster.services.items():
        print(f"    {name}")
        with service.log_file.open() as log:
            log.seek(offsets[name])
            shown = 0
            for line in log:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                at = datetime.datetime.fromisoformat(entry["timestamp"]).timestamp()
                extra = {k: v for k, v in entry.items() if k not in ("event", "timestamp", "level")}
                print(f"      {at - t0:6.2f} {entry['event']} {str(extra)[:140]}")
                shown += 1
                if shown == LOG_LINES_SHOWN:
                    break


async def restart_and_probe(
    down: float, cluster: FaultCluster, watched: WatchedJob, run: int
) -> None:
    """nats-server killed and started again after ``down`` s; then every probe at once."""
    offsets = {n: s.log_file.stat().st_size for n, s in cluster.services.items()}
    await cluster.restart_nats(down)
    t0 = time.time()
    label = f"probe-{run}"
    record = cluster.records / f"{label}.txt"
    parameters = {"lines": 3, "record": str(record), "label": label}
    locked_label = f"probe-{run}-locked"
    locked_record = cluster.records / f"{locked_label}.txt"
    locked_parameters = {"lines": 3, "record": str(locked_record), "label": locked_label}
    locked_body = {"job_type": cluster.fresh_lock_type(), "parameters": locked_parameters}
    (health, _), (read, _), (submit, created), (_, locked_created) = await asyncio.gather(
        first_ok(cluster, "GET", "/health"),
        first_ok(cluster, "GET", f"/api/jobs/{watched.job.id}"),
        first_ok(cluster, "POST", "/api/jobs", {"job_type": "free", "parameters": parameters}),
        first_ok(cluster, "POST", "/api/jobs", locked_body),
    )
    new = ToolJob(created.json()["id"], label, record)
    row = await cluster.wait_job(new.id, lambda r: r.status in ("running", "completed"), 60)
    assert row is not None
    running = time.time()
    tool_start = await started_at(new)
    # A job of a lock (queued on it, the lock free): the runners' lock board must see it.
    locked_start = await started_at(
        ToolJob(locked_created.json()["id"], locked_label, locked_record)
    )
    viewer_new_line = await watched.first_line_after(t0)
    figures = {
        "run": run,
        "down": down,
        "health": health - t0,
        "read": read - t0,
        "submit": submit - t0,
        "new_tool_start": tool_start - t0,
        "new_running": running - t0,
        "locked_tool_start": locked_start - t0,
        "viewer_new_line": viewer_new_line - t0,
    }
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}), flush=True)
    logged_since(cluster, offsets, t0)


async def main(down: float, runs: int) -> None:
    async with running_cluster(lease_ttl=20.0) as cluster:
        strike = functools.partial(restart_and_probe, down)
        await fault_runs(cluster, runs, strike, settle=2.0, pause=3.0)


if __name__ == "__main__":
    asyncio.run(main(*down_and_runs()))
