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
lands on one. The run loop is ``bench/faultruns.py``'s; the fault here is ``kill_at_ack``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time

from bench.faultruns import WatchedJob, down_and_runs, fault_runs
from tests.ackholding_proxy import AckHoldingProxy
from tests.faults.cluster import FaultCluster
from tests.faults.proxied import Fault, proxied_cluster, strike_at_ack


async def kill_at_ack(
    proxy: AckHoldingProxy, down: float, cluster: FaultCluster, watched: WatchedJob, run: int
) -> None:
    """nats-server killed once the job's next line message is stored, its ack held back."""
    subject = f"{cluster.settings.prefix}.job.{watched.job.id}.lines"
    failed = await strike_at_ack(cluster, proxy, Fault(True, down), subject)
    t0 = time.time()
    assert failed is None, failed
    viewer_new_line = await watched.first_line_after(t0)
    await cluster.cancel(watched.job.id)
    async with asyncio.timeout(60):
        await watched.following
    stored = [seq for seq, _ in await cluster.stored_lines(watched.job.id)]
    viewer = watched.viewer
    whole = viewer.lines == stored == list(range(1, len(stored) + 1)) and viewer.dones == 1
    figures = {"run": run, "down": down, "viewer_new_line": round(viewer_new_line - t0, 2)}
    print(json.dumps({**figures, "once_in_order": whole}), flush=True)


async def main(down: float, runs: int) -> None:
    async with proxied_cluster(20.0, {"runner"}) as (cluster, proxy):
        strike = functools.partial(kill_at_ack, proxy, down)
        await fault_runs(cluster, runs, strike, settle=1.0, pause=2.0)


if __name__ == "__main__":
    asyncio.run(main(*down_and_runs()))
