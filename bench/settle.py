"""Waiting until the system has settled before a scenario starts, and how long that took.

The history scenario publishes 100,000 jobs' events (1,000,000) into the running system faster
than its other readers follow them: the runner takes each old ``JobRequested`` from its shared
consumer and dismisses it (the job has ended; one read of its last status each), the notifier
reads each job's end, and the replay leaves million-row tables for autovacuum. A scenario started
meanwhile shares the two cores with that work, and a job it starts queues behind the runner's
backlog: a 1,000,000-line flood measured so got a third or less of what it gets alone. Each
scenario after the history therefore starts once the durable consumers have nothing pending, the
projector's checkpoint is at the stream's end and no autovacuum worker runs, and the report says
how long each part took (itself a figure: how long a system needs to follow such a history).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Collection
from typing import Any

import asyncpg

from bench.system import RunningSystem
from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names

LIMIT_SECONDS = 900.0  # then the scenario starts anyway, and the report says what was left
POLL_SECONDS = 0.5


async def _pending(js: Any, names: Names) -> dict[str, int]:
    """Messages each durable consumer of the stream has still to take or to acknowledge."""
    out: dict[str, int] = {}
    for info in await js.consumers_info(names.stream):
        if info.config.durable_name:
            name = info.config.durable_name.removeprefix(f"{names.prefix}_")
            out[name] = (info.num_pending or 0) + (info.num_ack_pending or 0)
    return out


async def settle(
    system: RunningSystem,
    before: str,
    limit: float = LIMIT_SECONDS,
    paused: Collection[str] = (),
) -> dict[str, Any]:
    """Wait until nothing of earlier work is left; returns the wait and when each part ended.
    ``paused``: durable consumers (``runner``, ``notifier``) left out: their pending messages
    are not waited for (``replay_cost`` pauses the runner's), and the summary names them."""
    settings = Settings(nats_url=system.runtime["nats_url"], prefix=system.prefix)
    names = Names(system.prefix)
    nc = await eventstore.connect(settings, "bench-settle")
    db = await asyncpg.connect(system.runtime["database_url"])
    t0 = time.monotonic()
    done_at: dict[str, float] = {}
    left: dict[str, int] = {}
    looked = False
    try:
        js = nc.jetstream()
        while True:
            pending = await _pending(js, names)
            left = {k: v for k, v in pending.items() if v and k not in paused}
            last = (await js.stream_info(names.stream)).state.last_seq
            checkpoint = await db.fetchval("SELECT last_seq FROM readmodel.checkpoint") or 0
            if checkpoint < last:
                left["projector"] = last - checkpoint
            vacuums = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            )
            if vacuums:
                left["autovacuum"] = vacuums
            # (A part with nothing left at the first look waited 0 s.)
            now = time.monotonic() - t0 if looked else 0.0
            looked = True
            for part in ("runner", "notifier", "projector", "autovacuum"):
                if part not in left and part not in paused:
                    done_at.setdefault(part, now)
            if not left or time.monotonic() - t0 >= limit:
                break
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await db.close()
        await eventstore.close(nc)
    waited = time.monotonic() - t0
    result = {
        "before": before,
        "seconds": round(waited, 1),
        "parts_done_after_s": {k: round(v, 1) for k, v in done_at.items()},
        "left": left,
    }
    if paused:
        result["not_waited_for"] = sorted(paused)
    print(f"[{time.strftime('%H:%M:%S')}] {describe(result)}", file=sys.stderr, flush=True)
    return result


def describe(result: dict[str, Any]) -> str:
    """``settled before throughput after 12.3 s (runner 10.1 s, notifier 12.3 s, ...)``."""
    parts = ", ".join(f"{k} {v} s" for k, v in result["parts_done_after_s"].items() if v)
    text = f"settled before {result['before']} after {result['seconds']} s"
    if parts:
        text += f" ({parts})"
    if result.get("not_waited_for"):
        text += "; not waited for: " + ", ".join(result["not_waited_for"])
    if result["left"]:
        text += "; still pending: " + ", ".join(f"{k} {v:,}" for k, v in result["left"].items())
    return text
