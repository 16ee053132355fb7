"""What a runner's lock board costs while jobs run: its process's CPU and the messages its watch
is handed, with the watch of every key (as before session 27) and with the board's own keys
(``board.WATCHED_KEYS``), and with the board's watch made of every key (``every-own``: what the
filter alone saves; the rest is its cheaper reading of each message). RESULTS.md, "s27board".

``python -m bench.board_watch [--jobs 2000] [--rounds 3]``: one nats-server of its own; per run a
fresh lock bucket, a board in a process of its own (this module with ``--board``), and this
process writing each job's five lock bucket writes with the runner's own calls (lease and run
record, the lease rewrite after the spawn, the record's removal and the release), 16 jobs at a
time. The board's CPU is counted from before the first write until it has seen the last job's
release; nats-server's over the same window. Runs alternate, in that order in each round."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

import msgspec
import nats

from jobrunner.common import keywatch, retry, subscription
from jobrunner.common.slots import RunRecord, SlotTable, SlotValue
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.board import LockBoard, open_watch

AT_ONCE = 16
LAST = "slot.bench-end"


async def _nothing(_: SlotValue) -> None:
    pass


class CountingBoard(LockBoard):
    """The board, counting the entries its watch hands it."""

    handed = 0

    def _apply(self, key: str, value: bytes | None, operation: str | None, revision: int) -> None:
        self.handed += 1
        if key.startswith(("run.", "fence.")):
            return  # as the board before session 27 did with the keys it now never sees
        super()._apply(key, value, operation, revision)


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def board_process(url: str, bucket: str, mode: str) -> None:
    """The board: says ``ready`` once its watch replayed the bucket, waits for ``go``, then
    reports its CPU and its watch's deliveries once it has seen ``LAST``."""
    nc = await nats.connect(url)
    kv = await nc.jetstream().key_value(bucket)
    if mode == "board":
        first = await open_watch(kv)
    else:
        if mode == "every":  # open_watch before session 27: nats-py's watch of every key
            first = await retry.start_bucket(kv).watchall()
        else:  # "every-own": the board's own watch, of every key (what its filter alone saves)
            first = await keywatch.watch_keys(retry.start_bucket(kv), [">"])
        assert first._sub is not None
        subscription.keep_on(first._sub, kv._js)
    board, stop = CountingBoard(), asyncio.Event()
    watching = asyncio.create_task(board.watch(kv, stop, _nothing, first))
    await board.ready.wait()
    print("bench: ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = _cpu_seconds()
    while LAST not in board.slots:
        await board.wait_change(LAST, 1.0)
    cpu = _cpu_seconds() - started
    print("bench: " + json.dumps({"cpu": cpu, "delivered": board.handed}), flush=True)
    stop.set()
    await watching
    await nc.close()


def _said(out: IO[str]) -> str:
    """The board process's next line for the bench (its logs go to the same stdout)."""
    while not (line := out.readline()).startswith("bench: "):
        if not line:
            raise RuntimeError("the board process ended")
    return line.removeprefix("bench: ").strip()


async def one_job(table: SlotTable, n: int, tag: str) -> None:
    job_id = f"{tag}-{n}"
    key = f"job.{job_id}"
    held = SlotValue(job_id=job_id, phase="held", job_type="echo", runner_id="r1")
    record = RunRecord(job_id=job_id, slot_key=key, runner_id="r1", started_at=time.time())
    lease, recorded = await table.create_recorded(key, held, record)
    assert lease is not None
    assert recorded
    spawned = msgspec.structs.replace(held, pid=1, pgid=1, started=1)
    lease = await table.renew(lease, spawned)
    assert lease is not None
    assert await table.end_run(job_id, lease, retry_pause=0.1)


async def one_run(server: EmbeddedNats, mode: str, jobs: int) -> dict[str, float]:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    names = Names(prefix)
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.create_key_value(bucket=names.locks_bucket, history=1, limit_marker_ttl=60.0)
    table = SlotTable(js, names, ttl_seconds=30)
    board = subprocess.Popen(  # noqa: ASYNC220 - a bench: waits for nothing meanwhile
        [
            sys.executable,
            "-m",
            "bench.board_watch",
            "--board",
            server.url,
            names.locks_bucket,
            mode,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert board.stdin is not None
    assert board.stdout is not None
    try:
        assert _said(board.stdout) == "ready"
        assert server.proc is not None
        server_started = _server_cpu_seconds(server.proc.pid)
        wall = time.monotonic()
        board.stdin.write("go\n")
        board.stdin.flush()
        turns = asyncio.Semaphore(AT_ONCE)

        async def job(n: int) -> None:
            async with turns:
                await one_job(table, n, prefix)

        await asyncio.gather(*(job(n) for n in range(jobs)))
        await table.try_acquire(LAST, SlotValue(job_id="end", phase="held"), fresh=True)
        line = await asyncio.get_running_loop().run_in_executor(None, _said, board.stdout)
        wall = time.monotonic() - wall
        result: dict[str, float] = json.loads(line)
        result["server_cpu"] = _server_cpu_seconds(server.proc.pid) - server_started
        result["wall"] = wall
        return result
    finally:
        board.wait(timeout=30)
        await js.delete_key_value(names.locks_bucket)
        await nc.close()


async def compare(jobs: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        server = EmbeddedNats(Path(root) / "nats")
        server.start()
        try:
            print(f"{jobs} jobs a run, load {os.getloadavg()[0]:.1f}")
            for round_ in range(rounds):
                for mode in ("every", "every-own", "board"):
                    r = await one_run(server, mode, jobs)
                    print(
                        f"round {round_ + 1} {mode:9}: "
                        f"board CPU {r['cpu'] * 1e6 / jobs:6.1f} µs/job, "
                        f"handed {r['delivered'] / jobs:.2f} msgs/job, nats-server CPU "
                        f"{r['server_cpu'] * 1e6 / jobs:6.1f} µs/job, {r['wall']:.2f} s, "
                        f"load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--board", nargs=3, metavar=("URL", "BUCKET", "MODE"))
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.board:
        asyncio.run(board_process(*args.board))
    else:
        asyncio.run(compare(args.jobs, args.rounds))


if __name__ == "__main__":
    main()
