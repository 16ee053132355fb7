"""The fan-out rows' "in JetStream": a plain NATS subscription on every job's lines, in a process
of its own, timing each line from the tool's print (its ``t=<monotonic>``) to its arrival here.

It used to run in the bench's process beside the 1,000 SSE clients: when that process fell
behind, its lag showed as the runner's (session 14 saw a 30 s backlog "in JetStream" at 12.8
lines a message), and its CPU competed with the clients'. Here it has its own loop and its own
CPU figure. (``time.monotonic`` is the system's monotonic clock, the same in every process, as
the tools' stamps already assume.)

Run by ``bench.scenarios.fan_out``: ``python -m bench.stored_lines NATS_URL SUBJECT EXPECTED``.
It prints ``ready`` once subscribed; when the bench writes ``done`` and closes its standard
input it waits (at most ``DRAIN_S``) for ``EXPECTED`` lines, prints one JSON object and exits. Its
standard output carries nothing else (its logs go to standard error); an input closed without
``done`` is a bench that died: it exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import time
from typing import Any

import structlog

from bench.report import summarize
from jobrunner.common import eventstore
from jobrunner.common.settings import Settings

STAMP = re.compile(rb"t=(\d+\.\d+)")
# After the last client's ``done`` every line is stored; a subscriber still behind gets this
# long to read the rest (its lag is what it measures, so it is not cut short of a backlog).
DRAIN_S = 60.0


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


async def measure(nats_url: str, subject: str, expected: int) -> dict[str, Any]:
    nc = await eventstore.connect(Settings(nats_url=nats_url), "bench-stored")
    delays: list[float] = []
    messages = 0
    all_in = asyncio.Event()

    async def stored(msg: Any) -> None:
        nonlocal messages
        now = time.monotonic()
        messages += 1
        delays.extend(now - float(t) for t in STAMP.findall(msg.data))
        if len(delays) >= expected:
            all_in.set()

    await nc.subscribe(subject, cb=stored)
    await nc.flush()
    cpu0 = _cpu()
    print("ready", flush=True)
    # Standard input says ``done`` and closes when the row's clients are all done.
    said = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    if said.strip() != "done":
        raise SystemExit("bench.stored_lines: the bench ended without saying done")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), DRAIN_S)
    cpu_s = _cpu() - cpu0
    await eventstore.close(nc)
    return summarize(delays) | {
        "lines_per_message": round(len(delays) / max(1, messages), 1),
        "messages": messages,
        "cpu_s": round(cpu_s, 3),
    }


def main() -> None:
    # Standard output is the bench's channel for ``ready`` and the figures: NATS warnings
    # (a reconnect during the row) go to standard error.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    nats_url, subject, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(asyncio.run(measure(nats_url, subject, expected))), flush=True)


if __name__ == "__main__":
    main()
