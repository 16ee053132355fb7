"""8. No noisy neighbour: a job printing 100 lines/s, its delay to its viewer alone and while
another job floods its output (and a client follows the flood).

The flood's follower resumes as a browser does when the API cuts it (too slow for its buffer) and
reports what it got: a follower cut for good would leave the quiet job beside a flood that nobody
watches, and the figure would flatter the API. The follower and the quiet job's viewer are the
bench's SSE clients (bench/sseclients.py: C where this machine compiles them), each in a process
of its own: in this process the follower's millions of lines would delay the quiet viewer's
socket reads, and the figure would measure the benchmark instead of jobrunner; and in Python the
follower spent about three times the C one's CPU a line (bench/RESULTS.md, session 34). This
process still freezes its start-up objects out of the garbage collector's reach before
it measures (a full collection took 160-240 ms on the loaded machine, delaying the NATS
subscriber's callbacks).

Where the delay is: a plain NATS subscriber on the quiet job's lines (its own connection, in
this process) sees each line once JetStream has stored it: the runner's and JetStream's share.
The rest, to the viewer, is the API's and the SSE hop's.
"""

from __future__ import annotations

import time

import httpx
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.report import summarize
from bench.scenarios import start_job, stream_path
from bench.sse import STAMP_RE
from bench.sseclients import SseClients, Stream, StreamResult, follow
from bench.system import RunningSystem
from jobrunner.common import eventstore, heap
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names

RATE = 100
FLOOD_LINES = 10_000_000  # more than the measurement lasts: the flood is cancelled after it


async def quiet_job(
    system: RunningSystem, http: httpx.AsyncClient, nc: NATS, seconds: int
) -> tuple[StreamResult, list[float]]:
    """The quiet job's viewer, and each line's delay until it was stored in JetStream.

    Posted with ``?wait=stored``, as a client that follows the job's stream does (README, HTTP
    API): the default answer waits for the read models (at most 2 s), and beside a flood the
    projector is behind by the flood's lines, so the viewer opened its stream after the tool's
    first second of lines (measured at load 15: the first line reached the API 1.1 s late)."""
    job = await start_job(
        http,
        "bench_paced",
        {"rate": RATE, "seconds": seconds, "delay": "1"},
        "/api/jobs?wait=stored",
    )
    stored: list[float] = []

    async def on_lines(msg: Msg) -> None:
        now = time.monotonic()
        stored.extend(now - float(t) for t in STAMP_RE.findall(msg.data))

    # Subscribed before the tool prints its first line (it waits a second first).
    sub = await nc.subscribe(Names(system.prefix).job_kind_subject(job, "lines"), cb=on_lines)
    try:
        (viewer,), _ = await follow(
            system.sse_clients,
            "127.0.0.1",
            system.port,
            [Stream(stream_path(job))],
            system.headers,
            timeout=seconds + 120,
        )
    finally:
        await sub.unsubscribe()
    return viewer, stored


async def noisy_neighbour(system: RunningSystem, http: httpx.AsyncClient, seconds: int) -> dict:
    """The quiet job alone (the limit), then beside a flood that outlasts it."""
    heap.freeze_startup_objects()
    nc = await eventstore.connect(Settings(nats_url=system.runtime["nats_url"]), "bench")
    try:
        return await _alone_then_beside(system, http, nc, seconds)
    finally:
        await eventstore.close(nc)


async def _alone_then_beside(
    system: RunningSystem, http: httpx.AsyncClient, nc: NATS, seconds: int
) -> dict:
    alone, alone_stored = await quiet_job(system, http, nc, seconds)
    flood = await start_job(http, "bench_flood", {"lines": FLOOD_LINES})
    follower = SseClients(system.sse_clients, "127.0.0.1", system.port, system.headers)
    async with follower:
        try:
            await follower.open([Stream(stream_path(flood), resume=True, record_delays=False)])
            beside, beside_stored = await quiet_job(system, http, nc, seconds)
            # (.get: a projector far behind the flood on a loaded machine may not show it yet)
            status = (await http.get(f"/api/jobs/{flood}")).json().get("status")
        finally:
            await http.post(f"/api/jobs/{flood}/cancel")
        try:
            (followed,) = await follower.wait(60)
        except TimeoutError:
            (followed,) = await follower.stop()
        viewer = {
            "lines": followed.lines,
            "resumes": followed.resumes,
            "ended": followed.ended,
            "clients": system.sse_clients.kind,
            "cpu_s": round(follower.cpu_seconds(), 2),
        }
    flood_lines = (await http.get(f"/api/jobs/{flood}")).json().get("log_count")
    return {
        "rate": RATE,
        "seconds": seconds,
        "alone": summarize(alone.delays),
        "beside_flood": summarize(beside.delays),
        "alone_stored": summarize(alone_stored),
        "beside_flood_stored": summarize(beside_stored),
        "lines_received": beside.lines,
        "lines_expected": RATE * seconds,
        "gaps": beside.gaps,
        "duplicates": beside.duplicates,
        "flood_running_throughout": status == "running",
        # Its status in the read models when the quiet job ended (None: not projected yet).
        "flood_status": status,
        "flood_lines": flood_lines,
        # The flood's viewer: lines received, reconnects after a cut, how it ended ("done").
        "flood_viewer": viewer,
    }
