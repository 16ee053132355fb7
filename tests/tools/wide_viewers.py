"""A flood of wide lines and the viewers that fall behind it, for the SSE memory tests: the
``wide`` job type (tests/tools/wide.py), a client whose socket takes in little, reading until the
API cuts a viewer, and resuming as a browser does."""

from __future__ import annotations

import socket

import httpx

from jobrunner.services.api.fanout import Fanout
from tests.sse_client import SseEvent, SseStream, iter_events, read_stream
from tests.system import System
from tests.tools.waiting import until

LINES = 30_000
WIDTH = 100
CLIENT_BYTES = 1024 * 1024
EXPECTED = [f"INFO line {i} " + "x" * WIDTH for i in range(1, LINES + 1)]
JOB_TYPES = f"""
[job_types.wide]
title = "Wide lines"
argv = ["{{python}}", "tests/tools/wide.py", "--lines", "{LINES}", "--width", "{WIDTH}",
        "--wait", "1"]
"""


def fanout_of(system: System) -> Fanout:
    fanout: Fanout = system._server.config.app.state.ctx.fanout  # type: ignore[union-attr]
    return fanout


# The flood, its stalled viewer and the runner share this test's one event loop: on a loaded
# machine the tests' short TTL (3 s) was lost before the viewer was cut, ending the flood early.
FLOOD_LEASE_TTL = 15.0


async def start_wide(system: System) -> str:
    async with system.client() as client:
        response = await client.post("/api/jobs", json={"job_type": "wide"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def stalling_client(system: System) -> httpx.AsyncClient:
    """A client whose socket takes in little: the server, not the kernel, has to hold its data."""
    small = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)])
    return system.client(transport=small)


async def stall_until_cut(client: httpx.AsyncClient, path: str, fanout: Fanout) -> list[SseEvent]:
    """Open the stream, read nothing until the API cut it, then read what it had sent."""
    cut_before = fanout.clients_cut
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        await until(lambda: fanout.clients_cut > cut_before, "the stalled client cut", seconds=90)
        return [event async for event in iter_events(response, SseStream())]


def texts(events: list[SseEvent]) -> list[str]:
    return [e.json["text"] for e in events if e.event == "message"]


async def resume(client: httpx.AsyncClient, path: str, first: list[SseEvent]) -> list[SseEvent]:
    ids = [e.id for e in first if e.id]
    return (await read_stream(client, path, last_event_id=ids[-1] if ids else None)).events


async def read_to_the_end(client: httpx.AsyncClient, path: str) -> list[SseEvent]:
    """Read the stream until ``done``, resuming as a browser does when the API cut it: a live
    viewer in the same process as the API (as here) may itself fall a client's share behind a
    flood, and must then lose nothing either."""
    events: list[SseEvent] = []
    while not events or events[-1].event != "done":
        events += await resume(client, path, events)
    return events


def stream_texts(stream: object) -> list[str]:
    """The lines' texts of a read stream (``tests.sse_client.read_stream``)."""
    return [e.json["text"] for e in stream.events if e.event == "message"]  # type: ignore[attr-defined]
