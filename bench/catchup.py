"""Catch-up reads: a client that resumes a stream from far back, and how fast its backlog comes.

- ``GET /api/jobs/stream?after=0`` over the history scenario's stream (1,000,000 events): from
  the request until the ``job_update`` of the stream's last update event arrives;
- a finished job's ``GET /api/jobs/{id}/stream`` from its start (the throughput scenario's
  1,000,000 lines), until ``done``;
- the limit: the raw stream reader reading the whole stream from sequence 1 in the same run
  (no decoding, no HTTP), what JetStream and one Python reader do with nothing else in the way.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from bench.sseclients import Stream, follow
from bench.system import RunningSystem
from jobrunner.common import eventstore
from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.settings import Settings
from jobrunner.common.streamreader import StreamReader
from jobrunner.contracts.names import Names

_ID = re.compile(rb"id: (\d+)")


class UpdateCounter(asyncio.Protocol):
    """Counts ``job_update`` frames and follows the last ``id``; done once it reaches ``until``."""

    def __init__(self, path: str, host: str, headers: dict[str, str], until: int) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n"
        ).encode()
        self.until = until
        self.frames = 0
        self.last_id = 0
        self._tail = b""
        self.transport: asyncio.Transport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        # Frames and chunk sizes may be split across reads: keep a short tail to rejoin them.
        text = self._tail + data
        cut = text.rfind(b"\n\n")
        if cut < 0:
            self._tail = text[-4096:]
            return
        whole, self._tail = text[: cut + 2], text[cut + 2 :]
        self.frames += whole.count(b"event: job_update")
        ids = _ID.findall(whole[-512:])
        if ids:
            self.last_id = max(self.last_id, int(ids[-1]))
        if self.last_id >= self.until and not self.done.done():
            self.done.set_result(None)
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"stream closed at id {self.last_id}"))


async def last_update_seq(system: RunningSystem) -> tuple[int, int]:
    """The stream's last sequence, and that of its last event a job_update shows (not a line)."""
    settings = Settings(nats_url=system.runtime["nats_url"], prefix=system.prefix)
    names = Names(system.prefix)
    nc = await eventstore.connect(settings, "bench")
    try:
        js = nc.jetstream()
        last = (await js.stream_info(names.stream)).state.last_seq
        found = 0
        for seq in range(last, 0, -1):
            msg = await js.get_msg(names.stream, seq)
            if msg.subject is not None and not msg.subject.endswith(".lines"):
                found = seq
                break
        return last, found
    finally:
        await eventstore.close(nc)


async def updates_from_start(system: RunningSystem) -> dict[str, Any]:
    """``/api/jobs/stream?after=0``: the whole stream's job updates, from the request on."""
    last, until = await last_update_seq(system)
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    _, client = await loop.create_connection(
        lambda: UpdateCounter(
            "/api/jobs/stream?after=0", f"127.0.0.1:{system.port}", system.headers, until
        ),
        "127.0.0.1",
        system.port,
    )
    await asyncio.wait_for(client.done, 600)
    seconds = time.monotonic() - t0
    return {
        "stream_events": until,
        "job_updates": client.frames,
        "seconds": round(seconds, 2),
        "stream_events_per_s": round(until / seconds),
        "job_updates_per_s": round(client.frames / seconds),
        "stream_last_seq": last,
    }


async def job_from_start(system: RunningSystem, job_id: str, lines: int) -> dict[str, Any]:
    """A finished job's stream from its start: every line, until ``done``; read by the bench's
    SSE clients (bench/sseclients.py; C where this machine compiles them), timed from their
    process's start."""
    t0 = time.monotonic()
    (client,), cpu = await follow(
        system.sse_clients,
        "127.0.0.1",
        system.port,
        [Stream(f"/api/jobs/{job_id}/stream", record_delays=False)],
        system.headers,
    )
    seconds = time.monotonic() - t0
    return {
        "lines": client.lines,
        "lines_expected": lines,
        "gaps": client.gaps,
        "duplicates": client.duplicates,
        "seconds": round(seconds, 2),
        "lines_per_s": round(client.lines / seconds),
        "sse_clients": {"kind": system.sse_clients.kind, "cpu_s": round(cpu, 2)},
    }


async def raw_read(system: RunningSystem) -> dict[str, Any]:
    """The limit: the raw stream reader over the whole stream from sequence 1, nothing else."""
    settings = Settings(nats_url=system.runtime["nats_url"], prefix=system.prefix)
    names = Names(system.prefix)
    nc = await eventstore.connect(settings, "bench")
    connection = NatsConnection.from_settings(settings)
    reader = StreamReader(
        nc.jetstream(), connection.servers, names.stream, names.all_subjects, connection=connection
    )
    try:
        t0 = time.monotonic()
        await reader.open(1)
        seen = 0
        async for batch in reader.batches():
            seen += len(batch)
            if reader.pending == 0:
                break
        seconds = time.monotonic() - t0
    finally:
        await reader.close()
        await eventstore.close(nc)
    return {"events": seen, "seconds": round(seconds, 2), "events_per_s": round(seen / seconds)}
