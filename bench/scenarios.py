"""The measurements against a running system: each returns a plain dict for the report."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil

from bench import workload
from bench.report import summarize
from bench.sse import open_stream
from bench.system import PYTHON, ROOT, MemorySampler, RunningSystem
from contracts import codec, events
from contracts.names import Names
from jobrunner import eventstore
from jobrunner.embedded.serverprocess import free_port
from jobrunner.settings import Settings


async def start_job(http: httpx.AsyncClient, job_type: str, parameters: dict[str, Any]) -> str:
    response = await http.post("/api/jobs", json={"job_type": job_type, "parameters": parameters})
    if response.status_code != 201:
        raise RuntimeError(f"POST /api/jobs answered {response.status_code}: {response.text}")
    return str(response.json()["id"])


def stream_path(job_id: str) -> str:
    return f"/api/jobs/{job_id}/stream"


async def line_latency(system: RunningSystem, http: httpx.AsyncClient, seconds: int) -> dict:
    """1. A tool prints 100 lines/s; each line's delay from print to the SSE client."""
    rate = 100
    job = await start_job(http, "bench_paced", {"rate": rate, "seconds": seconds, "delay": "1"})
    client = await open_stream("127.0.0.1", system.port, stream_path(job), system.headers)
    await asyncio.wait_for(client.done, seconds + 120)
    return {
        "lines_expected": rate * seconds,
        "lines_received": client.lines,
        "gaps": client.gaps,
        "duplicates": client.duplicates,
        **summarize(client.delays),
    }


async def dispatch(system: RunningSystem, http: httpx.AsyncClient, jobs: int) -> dict:
    """2. POST /api/jobs until the job's first line reaches an SSE client."""
    totals: list[float] = []
    posts: list[float] = []
    for _ in range(jobs):
        t0 = time.monotonic()
        job = await start_job(http, "bench_echo", {})
        posts.append(time.monotonic() - t0)
        client = await open_stream("127.0.0.1", system.port, stream_path(job), system.headers)
        await asyncio.wait_for(client.done, 60)
        assert client.first_line_at is not None, "the job's line never arrived"
        totals.append(client.first_line_at - t0)
    return {"jobs": jobs, **summarize(totals), "post": summarize(posts)}


async def throughput(system: RunningSystem, http: httpx.AsyncClient, lines: int) -> dict:
    """3. A tool floods ``lines`` 80-byte lines: when is every line in JetStream, in Postgres,
    at an SSE client; and how much memory do the services take meanwhile."""
    settings = Settings(nats_url=system.runtime["nats_url"])
    names = Names(system.runtime.get("prefix", "jobrunner"))
    nc = await eventstore.connect(settings, "bench")
    js = nc.jetstream()
    db = await asyncpg.connect(system.runtime["database_url"])
    marks: dict[str, float] = {}
    services = system.services()
    try:
        with MemorySampler(services) as memory:
            t0 = time.monotonic()
            job = await start_job(http, "bench_flood", {"lines": lines})
            client = await open_stream("127.0.0.1", system.port, stream_path(job), system.headers)
            client.record_delays = False

            async def stored() -> None:
                subject = names.job_kind_subject(job, "lines")
                while True:
                    try:
                        msg = await js.get_last_msg(names.stream, subject)
                        event = codec.decode(msg.data)
                        if isinstance(event, events.LineLogged) and event.lines[-1].seq >= lines:
                            marks["jetstream"] = time.monotonic()
                            return
                    except Exception:  # no lines yet
                        pass
                    await asyncio.sleep(0.02)

            async def projected() -> None:
                while True:
                    count = await db.fetchval(
                        "SELECT log_count FROM readmodel.jobs WHERE id = $1", job
                    )
                    if count is not None and count >= lines:
                        marks["postgres"] = time.monotonic()
                        return
                    await asyncio.sleep(0.05)

            async def received() -> None:
                await client.done
                marks["sse"] = time.monotonic()

            await asyncio.wait_for(asyncio.gather(stored(), projected(), received()), 400)
    finally:
        await db.close()
        await eventstore.close(nc)
    runner_start, runner_end = memory.start_end("runner")
    return {
        "lines": lines,
        "sse_lines_received": client.lines,
        "gaps": client.gaps,
        "duplicates": client.duplicates,
        "seconds": {k: round(v - t0, 3) for k, v in marks.items()},
        "lines_per_s": {k: round(lines / (v - t0)) for k, v in marks.items()},
        "peak_rss_mib": {name: memory.mib(name) for name in services},
        "runner_rss_mib_start_end": [runner_start, runner_end],
    }


async def fan_out(
    system: RunningSystem, http: httpx.AsyncClient, clients: int, seconds: int
) -> dict:
    """4. ``clients`` SSE clients on one job printing 200 lines/s."""
    rate = 200
    services = system.services()
    api = {"api": services["api"]}
    delay = 3 + clients / 100
    with MemorySampler(api) as memory:
        job = await start_job(
            http, "bench_paced", {"rate": rate, "seconds": seconds, "delay": f"{delay:.1f}"}
        )
        t_start = time.monotonic()
        gate = asyncio.Semaphore(50)

        async def connect() -> Any:
            async with gate:
                return await open_stream("127.0.0.1", system.port, stream_path(job), system.headers)

        streams = await asyncio.gather(*(connect() for _ in range(clients)))
        connected_after = time.monotonic() - t_start
        await asyncio.wait_for(asyncio.gather(*(s.done for s in streams)), seconds + delay + 120)
    expected = rate * seconds
    delays = [d for s in streams for d in s.delays]
    complete = sum(1 for s in streams if s.lines == expected and not s.gaps and not s.duplicates)
    return {
        "clients": clients,
        "lines_per_client": expected,
        "clients_complete": complete,
        "lines_lost": sum(max(0, expected - s.lines) for s in streams),
        "duplicates": sum(s.duplicates for s in streams),
        "connected_within_s": round(connected_after, 2),
        "tool_started_printing_after_s": delay,
        **summarize(delays),
        "api_peak_rss_mib": memory.mib("api"),
    }


def admin_url(database_url: str, database: str) -> str:
    parts = urlsplit(database_url)
    return parts._replace(path=f"/{database}").geturl()


REPLAY_PREFIX = "benchreplay"


async def replay(system: RunningSystem, jobs: int) -> dict:
    """5. Rebuild read models from ``jobs * 10`` events.

    Until ``jobrunner replay`` exists this measures its proxy: a fresh projector catching up from
    stream sequence 1 into an empty database.
    """
    settings = Settings(nats_url=system.runtime["nats_url"], prefix=REPLAY_PREFIX)
    names = Names(REPLAY_PREFIX)
    nc = await eventstore.connect(settings, "bench")
    js = nc.jetstream()
    try:
        await eventstore.ensure_topology(js, names, settings)
        published = await workload.publish_history(js, names, jobs)
    finally:
        await eventstore.close(nc)
    database = "bench_replay"
    admin = await asyncpg.connect(system.runtime["database_url"])
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    url = admin_url(system.runtime["database_url"], database)
    env = (
        system.env
        | system.runtime_env()
        | {
            "JOBRUNNER_PREFIX": REPLAY_PREFIX,
            "JOBRUNNER_DATABASE_URL": url,
        }
    )
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "jobrunner.cli",
        "projector",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    first_applied: float | None = None
    peak = 0
    try:
        ps = psutil.Process(proc.pid)
        db: asyncpg.Connection | None = None
        deadline = t0 + 600
        while time.monotonic() < deadline:
            peak = max(peak, ps.memory_info().rss)
            if db is None:
                try:
                    db = await asyncpg.connect(url)
                except Exception:
                    await asyncio.sleep(0.1)
                    continue
            try:
                last = await db.fetchval("SELECT last_seq FROM readmodel.checkpoint WHERE id = 1")
            except asyncpg.UndefinedTableError:
                last = None
            if last and first_applied is None:
                first_applied = time.monotonic()
            if last is not None and last >= published["last_seq"]:
                break
            await asyncio.sleep(0.1)
        done = time.monotonic()
        if db is not None:
            counts = await db.fetchrow(
                "SELECT (SELECT count(*) FROM readmodel.jobs) AS jobs, "
                "(SELECT count(*) FROM readmodel.log_lines) AS lines"
            )
            await db.close()
    finally:
        proc.terminate()
        await proc.wait()
    seconds = done - t0
    return {
        "method": "proxy: a fresh `jobrunner projector` catching up from sequence 1 into an "
        "empty database (`jobrunner replay` not available yet)",
        "events": published["events"],
        "publish_seconds": published["seconds"],
        "seconds_total": round(seconds, 2),
        "events_per_s": round(published["events"] / seconds),
        "events_per_s_after_start_up": round(
            published["events"] / (done - first_applied) if first_applied else 0
        ),
        "jobs_rows": counts["jobs"],
        "log_line_rows": counts["lines"],
        "projector_peak_rss_mib": round(peak / 2**20, 1),
        "database_url": url,
    }


async def _timed_requests(
    http: httpx.AsyncClient, paths: list[str], seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    t_end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < t_end:
        path = paths[i % len(paths)]
        i += 1
        t = time.monotonic()
        response = await http.get(path)
        latencies.append(time.monotonic() - t)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds),
        "statuses": statuses,
        **summarize(latencies),
    }


async def reads(system: RunningSystem, database_url: str, seconds: float) -> dict:
    """6. GET /api/jobs with filters over the replayed 100,000 jobs, and log paging, from one
    client, against an API process serving that database."""
    port = free_port()
    env = (
        system.env
        | system.runtime_env()
        | {
            "JOBRUNNER_PREFIX": REPLAY_PREFIX,
            "JOBRUNNER_DATABASE_URL": database_url,
        }
    )
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "jobrunner.cli",
        "api",
        "--port",
        str(port),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    headers = system.token_headers(env)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30
        ) as http:
            for _ in range(300):
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            list_paths = [
                "/api/jobs?limit=50",
                "/api/jobs?status=failed&limit=50",
                "/api/jobs?job_type=enrich_email&limit=50",
                "/api/jobs?status=completed&job_type=scraper&limit=50",
                "/api/jobs?status=cancelled&status=failed&limit=50",
            ]
            jobs = await _timed_requests(http, list_paths, seconds)
            logs_path = "/api/jobs/bench00000000/logs"
            probe = await http.get(logs_path)
            if probe.status_code == 404 or probe.status_code == 405:
                logs: dict[str, Any] = {"available": False, "status": probe.status_code}
            else:
                # Page through the long log the way a client follows cursors, when it can.
                pages = [logs_path + "?limit=500"]
                body = probe.json()
                cursor = body.get("next_cursor") if isinstance(body, dict) else None
                if cursor:
                    pages.append(f"{logs_path}?limit=500&cursor={cursor}")
                for offset in range(500, workload.BIG_JOB_LINES, 2000):
                    pages.append(f"{logs_path}?limit=500&after_seq={offset}")
                logs = {"available": True, **await _timed_requests(http, pages, seconds)}
    finally:
        proc.terminate()
        await proc.wait()
    return {"jobs_total": None, "list_jobs": jobs, "logs": logs}
