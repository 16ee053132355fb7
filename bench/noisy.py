"""8. No noisy neighbour: a job printing 100 lines/s, its delay to its viewer alone and while
another job floods its output (and a client follows the flood).

The flood's follower runs in a process of its own (``python -m bench.noisy URL PATH``): in this
process its hundreds of thousands of lines would delay the quiet viewer's socket reads, and the
figure would measure the benchmark instead of jobrunner.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import httpx

from bench.report import summarize
from bench.scenarios import start_job, stream_path
from bench.sse import open_stream
from bench.system import PYTHON, ROOT, RunningSystem

RATE = 100
HEADERS_VARIABLE = "BENCH_SSE_HEADERS"  # the follower's request headers (a token: not in argv)
FLOOD_LINES = 10_000_000  # more than the measurement lasts: the flood is cancelled after it


async def quiet_job(system: RunningSystem, http: httpx.AsyncClient, seconds: int) -> Any:
    job = await start_job(http, "bench_paced", {"rate": RATE, "seconds": seconds, "delay": "1"})
    client = await open_stream("127.0.0.1", system.port, stream_path(job), system.headers)
    await asyncio.wait_for(client.done, seconds + 120)
    return client


async def noisy_neighbour(system: RunningSystem, http: httpx.AsyncClient, seconds: int) -> dict:
    """The quiet job alone (the limit), then beside a flood that outlasts it."""
    alone = await quiet_job(system, http, seconds)
    flood = await start_job(http, "bench_flood", {"lines": FLOOD_LINES})
    follower = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "bench.noisy",
        str(system.port),
        stream_path(flood),
        cwd=ROOT,
        env=os.environ | {HEADERS_VARIABLE: json.dumps(system.headers)},
    )
    try:
        beside = await quiet_job(system, http, seconds)
        status = (await http.get(f"/api/jobs/{flood}")).json()["status"]
    finally:
        await http.post(f"/api/jobs/{flood}/cancel")
        try:
            await asyncio.wait_for(follower.wait(), 60)
        except TimeoutError:
            follower.kill()
            await follower.wait()
    flood_lines = (await http.get(f"/api/jobs/{flood}")).json().get("log_count")
    return {
        "rate": RATE,
        "seconds": seconds,
        "alone": summarize(alone.delays),
        "beside_flood": summarize(beside.delays),
        "lines_received": beside.lines,
        "lines_expected": RATE * seconds,
        "gaps": beside.gaps,
        "duplicates": beside.duplicates,
        "flood_running_throughout": status == "running",
        "flood_lines": flood_lines,
    }


async def _follow(port: int, path: str, headers: dict[str, str]) -> None:
    client = await open_stream("127.0.0.1", port, path, headers)
    client.record_delays = False
    await asyncio.wait_for(client.done, 600)


if __name__ == "__main__":
    asyncio.run(_follow(int(sys.argv[1]), sys.argv[2], json.loads(os.environ[HEADERS_VARIABLE])))
