"""CPU per client write of a feed's hand-over: ``python -m bench.hand_over_cost [ROUNDS] [python]``.

The real ``Fanout.hand_over``, ``sse.job_stream``'s direct writer and ``ChunkWriter`` of the tree
on ``PYTHONPATH``, on uvloop as the API runs, handing 10-line batches to 10 viewers waiting on a
feed (no NATS: the feed is made ready by hand and never reads). Each viewer's connection is a
loopback TCP socket drained by a process of its own; with ``python`` the send is a C no-op
instead, which leaves the Python work of a write alone (the kernel's share is one send a write
in every tree). Run it from two trees, alternating: with the sockets the figure moves with the
host's load by more than the Python work it is meant to compare (bench/RESULTS.md, session 33).
"""

import asyncio
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import uvloop

from jobrunner.contracts import events
from jobrunner.services.api import sse
from jobrunner.services.api.directwrite import ChunkWriter
from jobrunner.services.api.fanout import Batch, Fanout, Item, JobFeed, Limits

CLIENTS, LINES, ROUNDS = 10, 10, int(sys.argv[1]) if len(sys.argv) > 1 else 20000
PYTHON_ONLY = sys.argv[2:] == ["python"]

AT = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
DRAIN = "import socket,sys\ns=socket.socket(fileno=0)\nwhile s.recv(1<<20): pass\n"


async def main() -> None:
    loop = asyncio.get_running_loop()
    limits = Limits(keepalive=3600, client_bytes=8 << 20, total_bytes=256 << 20, history_idle=10)
    fanout = Fanout(None, None, sse.frames_for, limits)  # type: ignore[arg-type]
    feed = JobFeed(fanout, "j")
    feed.ready.set()
    fanout.feeds["j"] = feed
    drains, gens, tasks, transports, buffered = [], [], [], [], [0]
    for _ in range(CLIENTS):
        # Loopback TCP, as the API's clients.
        srv = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
        s, _ = srv.accept()
        srv.close()
        drains.append(subprocess.Popen([sys.executable, "-c", DRAIN], stdin=s.fileno()))  # noqa: ASYNC220 - before the clock
        s.close()
        transport: Any
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=c)
        if PYTHON_ONLY:
            # The Python work alone: a C no-op for the send (the kernel's share is the same
            # in every tree: one send a client write).
            transport.close()
            transport = SimpleNamespace(
                write=deque(maxlen=1).append, is_closing=bool, get_write_buffer_size=int
            )
        transports.append(transport)
        cycle = SimpleNamespace(
            disconnected=False,
            response_complete=False,
            response_started=True,
            chunked_encoding=True,
            flow=SimpleNamespace(write_paused=False),
            transport=transport,
        )
        gen = sse.job_stream(3000, fanout, "j", 1, None, None, writer=ChunkWriter(cycle))
        gens.append(gen)

        async def consume(gen: AsyncIterator[bytes] = gen) -> None:
            async for _ in gen:
                pass

        tasks.append(asyncio.create_task(consume()))
    for _ in range(5):
        await asyncio.sleep(0)
    assert all(s.direct is not None for s in feed.subscribers), "clients not waiting"
    texts = [
        f"INFO line {i} of the bench's paced tool t=12345.678901 [{i}/4000]" for i in range(LINES)
    ]
    seq = 0

    def batch() -> Batch:
        nonlocal seq
        seq += 1
        lines = [
            events.LogLine(seq * LINES + i, "stdout", "INFO", AT, t) for i, t in enumerate(texts)
        ]
        ev = events.LineLogged(job_id="j", lines=lines)
        return Batch([Item(seq, ev, sse.frames_for(ev, seq, None))])

    batches = [batch() for _ in range(ROUNDS)]  # made before the clock: only the hand-over counts
    written0 = fanout.direct_writes
    t0 = time.process_time()
    for i, b in enumerate(batches):
        fanout.hand_over(feed.subscribers, b)
        if i % 20 == 19:
            # Every write goes to the socket at once, never into uvloop's buffer (as the
            # clients of a row that keeps up): wait for the drains between rounds.
            await asyncio.sleep(0)
            while any(t.get_write_buffer_size() for t in transports):
                await asyncio.sleep(0.0005)
                buffered[0] += 1
    cpu = time.process_time() - t0
    writes = fanout.direct_writes - written0
    assert writes == ROUNDS * CLIENTS, (writes, ROUNDS * CLIENTS)
    print(
        f"{cpu / writes * 1e6:.3f} µs a client write, {cpu / ROUNDS * 1e6:.2f} µs a hand-over "
        f"of {CLIENTS} ({writes} writes, {len(batches[0].items[0].chunk)} bytes a batch; "
        f"waited for drains {buffered[0]} times)"
    )
    for t in tasks:
        t.cancel()
    for d in drains:
        d.kill()


if __name__ == "__main__":
    uvloop.run(main())
