"""What this machine does with nothing of jobrunner in the way, measured in the same run:
the floor under each result."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
from nats.js import api

from bench.nativetools import NativeTool
from bench.report import summarize
from bench.system import PYTHON, ROOT, RunningSystem
from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names

LIMIT_PREFIX = "benchlimit"


async def pipe_read(lines: int) -> dict[str, Any]:
    """Python (asyncio) reading the flood tool's lines from a pipe and splitting them."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "bench.tools.flood",
        "--lines",
        str(lines),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        limit=256 * 1024,
    )
    assert proc.stdout is not None
    count = 0
    rest = b""
    while chunk := await proc.stdout.read(256 * 1024):
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        count += len(parts)
    await proc.wait()
    seconds = time.monotonic() - t0
    return {"lines": count, "seconds": round(seconds, 3), "lines_per_s": round(count / seconds)}


async def pipe_latency(tool: NativeTool, seconds: int = 3, rate: int = 100) -> dict[str, Any]:
    """The paced tool's lines read by Python from a pipe: the delay with nothing else in the
    way. The same tool as the scenarios run (C or Python), so the floor is theirs."""
    proc = await asyncio.create_subprocess_exec(
        *tool.argv,
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    delays = []
    while line := await proc.stdout.readline():
        now = time.monotonic()
        delays.append(now - float(line.split(b"t=", 1)[1].split(b" ", 1)[0]))
    await proc.wait()
    return summarize(delays)


async def spawn_first_line(times: int = 20) -> dict[str, Any]:
    """Start ``echo`` and read its line: the floor under dispatch."""
    delays = []
    for _ in range(times):
        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "echo", "INFO dispatched", stdout=asyncio.subprocess.PIPE, start_new_session=True
        )
        assert proc.stdout is not None
        await proc.stdout.readline()
        delays.append(time.monotonic() - t0)
        await proc.wait()
    return summarize(delays)


def _line_batch(job_id: str, start: int, n: int) -> events.LineLogged:
    now = datetime.now(UTC)
    text = ("INFO line 0000000 " + "x" * 80)[:79]
    return events.LineLogged(
        job_id=job_id,
        lines=[events.LogLine(start + i, "stdout", "INFO", now, text) for i in range(n)],
    )


async def jetstream(
    system: RunningSystem | None,
    lines: int,
    batch: int = 1000,
    nats_url: str | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    """LineLogged messages of ``batch`` lines published with a window of unacknowledged ones;
    and one small message's way from publish to a JetStream push consumer. ``nats_url`` and
    ``replicas``: another NATS than the system's (a cluster) and the stream's replicas there."""
    url = nats_url or (system.runtime["nats_url"] if system else "")
    settings = Settings(nats_url=url, prefix=LIMIT_PREFIX, stream_replicas=replicas)
    names = Names(LIMIT_PREFIX)
    nc = await eventstore.connect(settings, "bench-limit")
    js = nc.jetstream()
    try:
        await eventstore.ensure_topology(js, names, settings)
        messages = [codec.encode(_line_batch("limitjob", i, batch)) for i in range(0, lines, batch)]
        subject = names.job_kind_subject("limitjob", "lines")
        t0 = time.monotonic()
        pending = []
        for i, payload in enumerate(messages):
            pending.append(
                await js.publish_async(subject, payload, headers={"Nats-Msg-Id": f"l{i}"})
            )
            if len(pending) >= 16:
                await pending.pop(0)
        for future in pending:
            await future
        seconds = time.monotonic() - t0
        published = {
            "lines": lines,
            "batch": batch,
            "message_bytes": len(messages[0]),
            "seconds": round(seconds, 3),
            "lines_per_s": round(lines / seconds),
        }
        # Latency: publish (with ack) -> ordered push consumer, 200 small messages.
        probe_subject = names.job_kind_subject("limitprobe", "progress")
        sub = await js.subscribe(
            probe_subject,
            stream=names.stream,
            ordered_consumer=True,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW),
        )
        delays = []
        for _ in range(200):
            t = time.monotonic()
            await js.publish(probe_subject, f"{t}".encode())
            msg = await sub.next_msg(timeout=5)
            delays.append(time.monotonic() - float(msg.data))
            await asyncio.sleep(0.005)
        await sub.unsubscribe()
        await js.delete_stream(names.stream)
    finally:
        await eventstore.close(nc)
    return {"publish": published, "delivery_latency": summarize(delays)}


async def copy_rows(system: RunningSystem, rows: int) -> dict[str, Any]:
    """Rows shaped like log lines COPY'd into an indexed table like ``log_lines``."""
    conn = await asyncpg.connect(system.runtime["database_url"])
    try:
        await conn.execute(
            "CREATE TEMP TABLE limit_lines (job_id text, seq integer, stream text, level text, "
            "ts timestamptz, text text, stream_seq bigint, PRIMARY KEY (job_id, seq))"
        )
        now = datetime.now(UTC)
        text = ("INFO line 0000000 " + "x" * 80)[:79]
        records = [("limitjob", i, "stdout", "INFO", now, text, i // 1000) for i in range(rows)]
        t0 = time.monotonic()
        for start in range(0, rows, 20_000):
            await conn.copy_records_to_table("limit_lines", records=records[start : start + 20_000])
        seconds = time.monotonic() - t0
    finally:
        await conn.close()
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


async def direct_query(database_url: str, seconds: float) -> dict[str, Any]:
    """The list query the API runs, sent straight to Postgres from one connection."""
    conn = await asyncpg.connect(database_url)
    latencies = []
    try:
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            t = time.monotonic()
            await conn.fetch(
                "SELECT * FROM readmodel.jobs WHERE status = ANY($1::text[]) "
                "ORDER BY created_at DESC, id DESC LIMIT 50",
                ["failed"],
            )
            latencies.append(time.monotonic() - t)
    finally:
        await conn.close()
    return {"requests_per_s": round(len(latencies) / seconds), **summarize(latencies)}


async def direct_walk(database_url: str, seconds: float) -> dict[str, Any]:
    """The queries of the GET /api/jobs walk (bench/scenarios.py ``LIST_FILTERS``, each filter's
    first page and the next), sent straight to Postgres from one connection of a pool set up
    as the API's: what the API's list requests cost without HTTP, Litestar and JSON."""
    from bench.scenarios import LIST_FILTERS
    from jobrunner.services.api import readmodels
    from jobrunner.services.api.context import read_pool
    from jobrunner.services.api.newest_first import NewestFirstCursor

    def job_filter(params: dict[str, str]) -> readmodels.JobFilter:
        def split(name: str) -> tuple[str, ...]:
            return tuple(params[name].split(",")) if name in params else ()

        return readmodels.JobFilter(
            statuses=split("status"), job_types=split("job_type"), search=params.get("search")
        )

    filters = [job_filter(params) for params in LIST_FILTERS]
    pool = await read_pool(database_url, 60.0)
    latencies = []
    try:
        await pool.fetchval("SELECT 1")  # the connection is open before the clock starts
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            for f in filters:
                t = time.monotonic()
                rows, _ = await readmodels.list_jobs(pool, 51, f)
                latencies.append(time.monotonic() - t)
                if len(rows) > 50:
                    t = time.monotonic()
                    last = rows[49]
                    after = NewestFirstCursor(last["created_at"], last["id"])
                    await readmodels.list_jobs(pool, 51, f, after)
                    latencies.append(time.monotonic() - t)
    finally:
        await pool.close()
    return {"requests_per_s": round(len(latencies) / seconds), **summarize(latencies)}
