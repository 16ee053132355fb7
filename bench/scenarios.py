"""The measurements against a running system: each returns a plain dict for the report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import psutil

from bench import natscount, workload
from bench.httpclient import LeanClient, Response
from bench.report import summarize
from bench.sse import open_stream
from bench.sseclients import SseClients, Stream
from bench.system import PYTHON, ROOT, MemorySampler, RunningSystem
from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names


async def start_job(
    http: httpx.AsyncClient, job_type: str, parameters: dict[str, Any], path: str = "/api/jobs"
) -> str:
    response = await http.post(path, json={"job_type": job_type, "parameters": parameters})
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


def _frames_json(raw: list[bytes]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(event, id, data) of each SSE frame."""
    out = []
    for block in b"".join(raw).split(b"\n\n"):
        event, frame_id, data = "message", None, None
        for field in block.split(b"\n"):
            if field.startswith(b"event: "):
                event = field[7:].decode()
            elif field.startswith(b"id: "):
                frame_id = field[4:].decode()
            elif field.startswith(b"data: "):
                data = json.loads(field[6:])
        if data is not None:
            out.append((event, frame_id, data))
    return out


def _wall(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


# The steps of a dispatch, in the order they are printed: each one's time since the POST started.
DISPATCH_STEPS = {
    "requested_stored": "request stored",
    "post": "POST answered",
    "sse": "SSE answered",
    "running": "running (runner)",
    "running_stored": "running stored",
    "line_read": "line read by the runner",
    "line_stored": "line stored",
    "client": "line at the client",
}


async def dispatch(system: RunningSystem, http: httpx.AsyncClient, jobs: int) -> dict:
    """2. POST /api/jobs until the job's first line reaches an SSE client; with where the time
    went: the events' own timestamps (the runner's clock) and the times JetStream stored them
    (the server's), wall clock, one machine."""
    totals: list[float] = []
    parts: dict[str, list[float]] = {step: [] for step in DISPATCH_STEPS}
    names = Names(system.runtime.get("prefix", "jobrunner"))
    nc = await eventstore.connect(Settings(nats_url=system.runtime["nats_url"]), "bench")
    js = nc.jetstream()

    async def stored_at(subject: str | None = None, seq: int | None = None) -> float:
        if seq is not None:
            msg = await js.get_msg(names.stream, seq)
        else:
            msg = await js.get_last_msg(names.stream, subject)
        assert msg.time is not None
        return msg.time.timestamp()

    # CPU each part spends per dispatch (this client's included): on two cores the parts share,
    # the sum bounds how short a dispatch can be.
    cpu0, own0 = system.cpu_seconds(), time.process_time()
    tools0 = system.tools_cpu_seconds()
    try:
        for _ in range(jobs):
            wall0, t0 = time.time(), time.monotonic()
            # A client that follows the job's stream does not need the read models to show the
            # job first (its stream is served from JetStream until they do).
            job = await start_job(http, "bench_echo", {}, "/api/jobs?wait=stored")
            parts["post"].append(time.monotonic() - t0)
            client = await open_stream(
                "127.0.0.1", system.port, stream_path(job), system.headers, keep_frames=True
            )
            parts["sse"].append(time.monotonic() - t0)
            await asyncio.wait_for(client.done, 60)
            assert client.first_line_at is not None, "the job's line never arrived"
            totals.append(client.first_line_at - t0)
            natscount.mark(f"{job}\t{t0}\t{client.first_line_at}")
            if gap := natscount.gap_seconds():
                await asyncio.sleep(gap)  # a counted run's tail of each job apart
            frames = _frames_json(client.frames)
            _, running_id, running = next(
                f for f in frames if f[0] == "status" and f[2]["status"] == "running"
            )
            _, line_id, line = next(f for f in frames if f[0] == "message")
            assert running_id is not None
            assert line_id is not None
            parts["running"].append(_wall(running["timestamp"]) - wall0)
            parts["line_read"].append(_wall(line["timestamp"]) - wall0)
            parts["client"].append(client.first_line_at - t0)
            requested = await stored_at(subject=names.job_kind_subject(job, "requested"))
            parts["requested_stored"].append(requested - wall0)
            parts["running_stored"].append(await stored_at(seq=int(running_id)) - wall0)
            line_seq = int(line_id.partition(":")[0])
            parts["line_stored"].append(await stored_at(seq=line_seq) - wall0)
        cpu1, own1 = system.cpu_seconds(), time.process_time()
        tools1 = system.tools_cpu_seconds()
        await natscount.idle()  # a counted run's window after the jobs (none otherwise)
    finally:
        await eventstore.close(nc)
    cpu = {part: used - cpu0.get(part, 0.0) for part, used in cpu1.items()}
    cpu["client"] = own1 - own0
    cpu["tools"] = tools1 - tools0  # the tool's side of each start (setpriv's exec, if any)
    return {
        "jobs": jobs,
        **summarize(totals),
        "since_post_started": {k: summarize(v) for k, v in parts.items()},
        "cpu_ms_per_job": {part: round(used / jobs * 1000, 2) for part, used in cpu.items()},
    }


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
    cpu0 = system.cpu_seconds()
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
                # A stream that never ends (no ``done``) is a row not met, not a run without
                # its table: given up before the wait for the rest (400 s) ends.
                try:
                    async with asyncio.timeout(390):
                        await client.done
                except TimeoutError:
                    client._finish("timed out")
                    return
                marks["sse"] = time.monotonic()

            await asyncio.wait_for(asyncio.gather(stored(), projected(), received()), 400)
            cpu1 = system.cpu_seconds()
    finally:
        await db.close()
        await eventstore.close(nc)
    runner_start, runner_end = memory.start_end("runner")
    return {
        "job_id": job,
        "lines": lines,
        "sse_lines_received": client.lines,
        "gaps": client.gaps,
        "duplicates": client.duplicates,
        # Lines missing after the last one received (a hole the client cannot see as a gap:
        # no later line follows it), and how the stream ended ("done": the job's end).
        "missing_at_end": lines - (client.next_seq - 1),
        "ended": client.ended,
        "seconds": {k: round(v - t0, 3) for k, v in marks.items()},
        "lines_per_s": {k: round(lines / (v - t0)) for k, v in marks.items()},
        "peak_rss_mib": {name: memory.mib(name) for name in services},
        "runner_rss_mib_start_end": [runner_start, runner_end],
        # Which process the flood costs most: CPU microseconds per line (the tool's own time is
        # not in the runner's: a child's is counted once it is waited for, after the end).
        "cpu_us_per_line": {
            part: round((cpu1[part] - cpu0.get(part, 0.0)) / lines * 1e6, 2) for part in cpu1
        },
        "rss_mib_over_time": {name: memory.profile(name) for name in services},
    }


def every_line_once(result: dict[str, Any]) -> bool:
    """Did the throughput row's SSE client get every line once, in order, up to the job's end?
    Gaps alone do not say: lines lost at the end, before ``done``, leave no gap."""
    return (
        result["sse_lines_received"] == result["lines"]
        and result["gaps"] == 0
        and result["duplicates"] == 0
        # Implied by the three above (every line counted, none twice, no gap: 1 to ``lines``
        # in order); said again for the results whose counts a reader checks by eye.
        and result.get("missing_at_end", 0) == 0
        and result.get("ended", "done") == "done"
    )


def stream_verdict(result: dict[str, Any]) -> str:
    """The throughput row's SSE client's count, as the table shows it."""
    return (
        f"{result['sse_lines_received']:,} of {result['lines']:,} lines; {result['gaps']:,} "
        f"gaps, {result.get('missing_at_end', 0):,} missing at the end, "
        f"{result['duplicates']:,} duplicated; ended {result.get('ended') or '?'}"
    )


CUT_METRIC = re.compile(
    r'^jobrunner_sse_streams_cut_total\{[^}]*reason="(\w+)"[^}]*\} (\S+)$', re.MULTILINE
)


async def streams_cut(http: httpx.AsyncClient) -> dict[str, int]:
    """The API's count of job streams it ended before their job's end, by reason."""
    response = await http.get("/metrics")
    counts: dict[str, int] = {}
    for reason, value in CUT_METRIC.findall(response.text):
        counts[reason] = counts.get(reason, 0) + int(float(value))
    return counts


HAND_OVER_METRICS = re.compile(
    r"^jobrunner_sse_(hand_overs|client_deliveries)_total(?:\{[^}]*\})? (\S+)$", re.MULTILINE
)


async def hand_overs(http: httpx.AsyncClient) -> dict[str, int]:
    """The API's count of its feeds' hand-overs and of the clients handed each one (none from
    an API that does not count them: before session 33)."""
    response = await http.get("/metrics")
    counts: dict[str, int] = {}
    for name, value in HAND_OVER_METRICS.findall(response.text):  # every service's, each once
        counts[name] = counts.get(name, 0) + int(float(value))
    return counts


async def fan_out(
    system: RunningSystem, http: httpx.AsyncClient, clients: int, seconds: int, jobs: int = 1
) -> dict:
    """4. ``clients`` SSE clients on ``jobs`` jobs (as many on each) printing 200 lines/s.

    A stream the API ends without ``done`` is resumed as a browser would (``Last-Event-ID``):
    "lost" counts lines no client got even so; the API says why it ended streams early."""
    rate = 200
    cut_before = await streams_cut(http)
    handed_before = await hand_overs(http)
    # Each line's delay until it is in JetStream too (a plain subscription beside the API's, in
    # a process of its own so that its lag and CPU are not this process's): what the runner
    # adds, apart from what the API's fan-out adds.
    expected = rate * seconds
    stored = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "bench.stored_lines",
        system.runtime["nats_url"],
        Names(system.prefix).kind_subjects("lines"),
        str(expected * jobs),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert stored.stdin is not None
    assert stored.stdout is not None
    try:
        if await stored.stdout.readline() != b"ready\n":
            raise RuntimeError("bench.stored_lines did not start")
        services = system.services()
        api = {"api": services["api"]}
        # Every client connects (and every job's tool starts) before the first line is printed.
        delay = 3 + clients / 100 + jobs / 10
        per_job = clients // jobs
        viewers = SseClients(system.sse_clients, "127.0.0.1", system.port, system.headers)
        cpu0 = _cpu(system, viewers)
        with MemorySampler(api) as memory:
            # No tool prints before this (each waits ``delay`` from its own start, after this).
            printing_from = time.monotonic() + delay
            job_ids = [
                await start_job(
                    http, "bench_paced", {"rate": rate, "seconds": seconds, "delay": f"{delay:.1f}"}
                )
                for _ in range(jobs)
            ]
            t_start = time.monotonic()
            # Every client checks every line; one in ten also times every line (all are served
            # alike; the Python clients timing 100,000 lines/s would starve the system measured,
            # and the figures stay comparable between the C and the Python clients).
            paths = [stream_path(job) for job in job_ids for _ in range(per_job)]
            async with viewers:
                await viewers.open(
                    Stream(path, resume=True, record_delays=i % 10 == 0)
                    for i, path in enumerate(paths)
                )
                connected_after = time.monotonic() - t_start
                # The CPU of streaming apart from that of connecting: every client is connected
                # and followed, no line printed yet. The whole run's figure below counts each
                # client's request too (1,000 of them cost the API a core-second and more).
                await asyncio.sleep(max(0.0, printing_from - 0.5 - time.monotonic()))
                printing_cpu0 = _cpu(system, viewers)
                connected_before_printing = time.monotonic() < printing_from
                streams = await viewers.wait(seconds + delay + 120)
        # Every stream ended with its job's end, so every tool has been waited for.
        cpu1 = _cpu(system, viewers)
        cut_after = await streams_cut(http)
        handed_after = await hand_overs(http)
        stored.stdin.write(b"done\n")
        stored.stdin.close()
        in_jetstream = json.loads(await stored.stdout.read())
        await stored.wait()
    finally:
        if stored.returncode is None:  # the row failed: the subscriber goes with it
            stored.kill()
            await stored.wait()
    delays = [d for s in streams for d in s.delays]
    complete = sum(
        1 for s in streams if s.lines == expected and s.next_seq == expected + 1 and not s.gaps
    )
    return {
        "jobs": jobs,
        "clients": len(streams),
        "lines_per_client": expected,
        "clients_complete": complete,
        "lines_lost": sum(max(0, expected - (s.next_seq - 1 - s.gaps)) for s in streams),
        "duplicates": sum(s.duplicates for s in streams),
        "gaps": sum(s.gaps for s in streams),
        "clients_resumed": sum(1 for s in streams if s.resumes),
        "clients_not_done": sum(1 for s in streams if s.ended != "done"),
        "streams_cut_by_api": {
            reason: count - cut_before.get(reason, 0)
            for reason, count in cut_after.items()
            if count > cut_before.get(reason, 0)
        },
        # What the API's CPU is spent per (bench/fanout_cost.py): its feeds' hand-overs and the
        # clients handed each (one write or queued batch a client).
        "api_hand_overs": {
            name: count - handed_before.get(name, 0) for name, count in handed_after.items()
        },
        "clients_timed": sum(1 for s in streams if s.record_delays),
        # The viewers' own process (bench/sseclients.py): which clients, and their CPU per line
        # each client got (on a real deployment browsers on other machines pay it).
        "sse_clients": {
            "kind": system.sse_clients.kind,
            "cpu_s": round(cpu1["sse_clients"], 2),
            "us_per_delivered_line": round(
                cpu1["sse_clients"] / max(1, sum(s.lines for s in streams)) * 1e6, 2
            ),
        },
        "connected_within_s": round(connected_after, 2),
        "tool_started_printing_after_s": delay,
        **summarize(delays),
        # Lines a message: a runner behind its tools batches more, and spends less a line.
        "in_jetstream": {k: v for k, v in in_jetstream.items() if k != "cpu_s"},
        "api_peak_rss_mib": memory.mib("api"),
        # Where the machine's CPU went, per line printed: the services, the tools themselves
        # (a paced tool's sleep, wake-up and write cost more than any service's share of a line)
        # the viewers' process ("sse_clients"; before session 34 they ran in this process and
        # their CPU was in "bench"), this process, and the subscription timing "in JetStream"
        # ("bench_stored"; before session 15 it ran in this process and its CPU was in "bench").
        "cpu_us_per_line": {
            part: round((cpu1[part] - cpu0.get(part, 0.0)) / (expected * jobs) * 1e6, 1)
            for part in cpu1
        }
        | {"bench_stored": round(in_jetstream["cpu_s"] / (expected * jobs) * 1e6, 1)},
        # The same from the moment every client was connected, just before the first line: the
        # fan-out's own cost (the writes to the clients, the lines' framing, NATS' deliveries).
        # None when the clients were still connecting as the tools began to print.
        "cpu_us_per_line_printing": {
            part: round((cpu1[part] - printing_cpu0.get(part, 0.0)) / (expected * jobs) * 1e6, 1)
            for part in cpu1
        }
        if connected_before_printing
        else None,
    }


def _cpu(system: RunningSystem, viewers: SseClients) -> dict[str, float]:
    return system.cpu_seconds() | {
        "tools": system.tools_cpu_seconds(),
        "bench": _own_cpu(),
        "sse_clients": viewers.cpu_seconds(),
    }


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _children_cpu() -> float:
    """CPU seconds of the bench's children it has waited for."""
    times = os.times()
    return times.children_user + times.children_system


async def history_and_replay(
    system: RunningSystem, jobs: int, settle_before_replay: Callable[[], Awaitable[None]]
) -> dict:
    """5. ``jobs * 10`` events published into the running system's stream; the live projector
    catches up with them; then, once the runner's and the notifier's backlog of the history is
    gone too (``settle_before_replay``: the replay is measured alone, as every scenario after
    the history is), ``jobrunner replay`` rebuilds every read model from sequence 1."""
    settings = Settings(nats_url=system.runtime["nats_url"], prefix=system.prefix)
    names = Names(system.prefix)
    nc = await eventstore.connect(settings, "bench")
    js = nc.jetstream()
    db = await asyncpg.connect(system.runtime["database_url"])
    try:
        t0 = time.monotonic()
        published = await workload.publish_history(js, names, jobs)
        checkpoint = "SELECT last_seq FROM readmodel.checkpoint"
        while True:  # polling the read model is the point: when does it hold everything
            if await db.fetchval(checkpoint) >= published["last_seq"]:
                break
            await asyncio.sleep(0.05)
        caught_up = time.monotonic() - t0
        stream_events = (await js.stream_info(names.stream)).state.messages
    finally:
        await db.close()
        await eventstore.close(nc)
    live = {
        "events": published["events"],
        "publish_events_per_s": round(published["events"] / published["seconds"]),
        "projected_within_s": round(caught_up, 2),
        "projected_events_per_s": round(published["events"] / caught_up),
    }
    await settle_before_replay()
    services = system.services()
    # The replay's own CPU joins the bench's children's once it is waited for.
    cpu0 = system.cpu_seconds() | {"replay": _children_cpu()}
    t1 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "jobrunner.cli",
        "replay",
        "--state-dir",
        str(system.state_dir),
        env=system.env | system.runtime_env(),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    peak = 0
    try:
        ps = psutil.Process(proc.pid)
        wait = asyncio.ensure_future(proc.communicate())
        while not wait.done():
            with contextlib.suppress(psutil.Error):
                peak = max(peak, ps.memory_info().rss)
            await asyncio.sleep(0.1)
        out, err = wait.result()
    finally:
        if proc.returncode is None:
            proc.terminate()
    seconds = time.monotonic() - t1
    cpu1 = system.cpu_seconds() | {"replay": _children_cpu()}
    if proc.returncode != 0:
        raise RuntimeError(f"jobrunner replay failed: {err.decode()[-2000:]}")
    # Its own last progress line: "replay: N events (...), R events/s, ..."
    rates = re.findall(r"replay: (\d+) events \(.*?\), ([\d,]+) events/s", err.decode())
    events_done, rate = (int(rates[-1][0]), int(rates[-1][1].replace(",", ""))) if rates else (0, 0)
    return {
        "live_projection": live,
        "replay": {
            "method": "`jobrunner replay` (rebuild into a fresh schema, compare, swap)",
            "stream_events": stream_events,
            "events": events_done,
            "events_per_s_reported": rate,
            "seconds_total": round(seconds, 2),
            "events_per_s_total": round(stream_events / seconds),
            "replay_peak_rss_mib": round(peak / 2**20, 1),
            # What bounds it on two cores: CPU seconds per million events, by process.
            "cpu_s_per_million_events": {
                part: round((cpu1[part] - cpu0.get(part, 0.0)) / stream_events * 1e6, 2)
                for part in cpu1
            },
            "projector_rss_mib": round(services["projector"].memory_info().rss / 2**20, 1)
            if "projector" in services
            else None,
            # "(loading 17.0 s, indexing 1.5 s, comparing 1.5 s)" from its final line
            "phases": next(iter(re.findall(r"\((loading [^)]*)\)", out.decode())), None),
            "summary": out.decode().strip()[-500:],
        },
    }


async def _timed(walk: Callable[[], AsyncIterator[Response]], seconds: float) -> dict[str, Any]:
    """Requests from one client, one after another, for ``seconds``."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        t = time.monotonic()
        async for response in walk():
            latencies.append(time.monotonic() - t)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            t = time.monotonic()
            if t > t_end:
                break
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds),
        "statuses": statuses,
        **summarize(latencies),
    }


LIST_FILTERS = [
    {},
    {"status": "failed"},
    {"job_type": "enrich_email"},
    {"status": "completed", "job_type": "scraper"},
    {"status": "cancelled,failed"},
    {"search": "bench000"},
]


async def reads(system: RunningSystem, seconds: float, jobs: int) -> dict:
    """6. One client: GET /api/jobs with filters, two pages each (following ``next_cursor``),
    over the 100,000 jobs; and GET /api/jobs/{id}/logs paging through a 20,000-line log.

    Through a lean keep-alive client (bench/httpclient.py): httpx's own CPU per request is as
    large as the API's, and would be measured instead of it."""
    async with LeanClient("127.0.0.1", system.port, system.headers) as http:
        return await _reads(system, http, seconds, jobs)


def cpu_now(system: RunningSystem) -> dict[str, float]:
    """CPU seconds so far of the API, Postgres and this process (the bench's client)."""
    cpu = system.cpu_seconds()
    return {"api": cpu.get("api", 0.0), "postgres": cpu.get("postgres", 0.0), "bench": _own_cpu()}


def cpu_us_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict:
    """µs of CPU per request by process, between two ``cpu_now`` readings."""
    return {part: round((after[part] - before[part]) / max(requests, 1) * 1e6) for part in before}


async def _reads(system: RunningSystem, http: LeanClient, seconds: float, jobs: int) -> dict:
    async def list_walk() -> AsyncIterator[Response]:
        for params in LIST_FILTERS:
            response = await http.get("/api/jobs", params={**params, "limit": 50})
            yield response
            cursor = response.json().get("next_cursor") if response.status_code == 200 else None
            if cursor:
                yield await http.get("/api/jobs", params={**params, "limit": 50, "cursor": cursor})

    async def log_walk() -> AsyncIterator[Response]:
        after: int | None = 0
        while after is not None:
            response = await http.get(
                f"/api/jobs/{workload.BIG_JOB_ID}/logs", params={"limit": 500, "after": after}
            )
            yield response
            after = response.json().get("next_after") if response.status_code == 200 else None

    out: dict[str, Any] = {"jobs": jobs}
    for name, walk in (("list_jobs", list_walk), ("logs", log_walk)):
        # CPU per request by process beside the rate: on the shared machine a rate mostly
        # says how busy the cores were, the API's CPU per request what the API costs.
        before = cpu_now(system)
        out[name] = await _timed(walk, seconds)
        out[name]["cpu_us_per_request"] = cpu_us_per_request(
            before, cpu_now(system), out[name]["requests"]
        )
    return out
