"""How long a job's viewer waits for its next line when NATS is killed with a line message's
ack lost (the message stored, its ack not yet back to the runner).

``PYTHONPATH=$PWD python -m bench.nats_restart_lost_ack [DOWN_SECONDS] [RUNS]`` starts the
fault suite's cluster with the runners' NATS connections through ``tests/ackholding_proxy.py``;
per run, a job printing a line every 50 ms followed by an SSE viewer, the proxy holding the ack
of its next line message, nats-server SIGKILLed once that message is stored, down
``DOWN_SECONDS``, started again on the same port and store. Printed per run, in seconds after
the restart returned: the first line printed after the restart at the viewer, and whether the
viewer had every line once, in order, after the job's cancel. ``bench/nats_restart.py``'s
kill lands where it lands (a message in flight in about one run of seven); this one always
lands on one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx

from bench.nats_restart import printed
from tests.ackholding_proxy import AckHoldingProxy
from tests.faults.cluster import FaultCluster
from tests.faults.proxied import Fault, proxied_cluster, strike_at_ack
from tests.faults.viewers import Viewer

INTERVAL = 0.05


async def one_run(cluster: FaultCluster, proxy: AckHoldingProxy, run: int, down: float) -> None:
    job = await cluster.submit(cluster.fresh_lock_type(), 100_000, INTERVAL)
    viewer = Viewer(job.id)
    received: list[tuple[int, float]] = []
    sse = httpx.AsyncClient(base_url=cluster.base_url, timeout=httpx.Timeout(30, read=120))
    following = asyncio.create_task(viewer.follow(sse))

    async def watch() -> None:
        seen = 0
        while True:
            for seq in viewer.lines[seen:]:
                received.append((seq, time.time()))
            seen = len(viewer.lines)
            await asyncio.sleep(0.005)

    watching = asyncio.create_task(watch())
    try:
        async with asyncio.timeout(60):
            await viewer.got_line.wait()
        await asyncio.sleep(1)
        subject = f"{cluster.settings.prefix}.job.{job.id}.lines"
        failed = await strike_at_ack(cluster, proxy, Fault(True, down), subject)
        t0 = time.time()
        assert failed is None, failed
        async with asyncio.timeout(60):
            while True:
                times = printed(job)
                after = [at for seq, at in received if times.get(seq, 0) > t0]
                if after:
                    break
                await asyncio.sleep(0.02)
        await cluster.cancel(job.id)
        async with asyncio.timeout(60):
            await following
        stored = [seq for seq, _ in await cluster.stored_lines(job.id)]
        whole = viewer.lines == stored == list(range(1, len(stored) + 1)) and viewer.dones == 1
        figures = {"run": run, "down": down, "viewer_new_line": round(after[0] - t0, 2)}
        print(json.dumps({**figures, "once_in_order": whole}), flush=True)
    finally:
        watching.cancel()
        following.cancel()
        await asyncio.gather(watching, following, return_exceptions=True)
        await sse.aclose()
        await cluster.cancel(job.id)


async def main(down: float, runs: int) -> None:
    async with proxied_cluster(20.0, {"runner"}) as (cluster, proxy):
        for run in range(runs):
            await one_run(cluster, proxy, run, down)
            await asyncio.sleep(2)


if __name__ == "__main__":
    asyncio.run(
        main(
            float(sys.argv[1]) if len(sys.argv) > 1 else 0.0,
            int(sys.argv[2]) if len(sys.argv) > 2 else 3,
        )
    )
