"""Fault injection on the wire: a TCP proxy in front of a real server that holds back one chunk
of what the server sends (its INFO, its TLS reply, its PONG) for a while, or a listener that
accepts and never says anything. Not a mock: the bytes that do flow are the real server's."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import msgspec
from nats.aio.client import Client as NATS

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from tests.tools.loopback_server import LoopbackServer


@asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A URL whose listener accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"nats://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def refusing_address() -> Iterator[str]:
    """A URL whose port is held (bound) but not listening: the kernel refuses every connect
    at once, and no other program can take the port meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"nats://127.0.0.1:{sock.getsockname()[1]}"


class StallingProxy:
    """Forwards to ``target``; the ``hold``-th chunk the server sends on each connection (0: the
    first, the INFO line) is delayed by ``seconds`` (``math.inf``: never sent).

    With ``accept_after``, the listener's accept queue is full for that long (``math.inf``:
    for good), so a TCP connect gets no answer at all (the kernel drops its SYN) until then.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        hold: int | None = None,
        seconds: float = 0.0,
        accept_after: float = 0.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.hold = hold
        self.seconds = seconds
        self.accept_after = accept_after
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fillers: list[socket.socket] = []

    def url(self, scheme: str = "nats", credentials: str = "") -> str:
        return f"{scheme}://{credentials}127.0.0.1:{self.port}"

    async def __aenter__(self) -> StallingProxy:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self.port = int(listener.getsockname()[1])
        if not self.accept_after:
            self._server = await asyncio.start_server(self._serve, sock=listener)
            return self
        for _ in range(3):  # more than a backlog of 0 holds: the queue is full
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self._fillers.append(filler)
        if not math.isinf(self.accept_after):
            task = asyncio.create_task(self._accept_later(listener))
            self._tasks.add(task)
        else:
            self._fillers.append(listener)  # closed on exit
        return self

    async def _accept_later(self, listener: socket.socket) -> None:
        await asyncio.sleep(self.accept_after)
        # Serving listens again with a long queue: the next SYN the client sends is answered.
        self._server = await asyncio.start_server(self._serve, sock=listener)

    async def __aexit__(self, *exc: object) -> None:
        for sock in self._fillers:
            sock.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection(*self.target)
        tasks = [
            asyncio.create_task(self._pump(client_r, up_w, hold=None)),
            asyncio.create_task(self._pump(up_r, client_w, hold=self.hold)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            for writer in (client_w, up_w):
                writer.close()

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, hold: int | None
    ) -> None:
        chunk_no = 0
        while chunk := await src.read(1 << 16):
            if chunk_no == hold:
                if math.isinf(self.seconds):
                    await asyncio.Event().wait()
                await asyncio.sleep(self.seconds)
            chunk_no += 1
            dst.write(chunk)
            await dst.drain()


class FreezingProxy(LoopbackServer):
    """Forwards to ``target``; ``freeze(n)`` holds back everything either side sends on its
    ``n``-th connection (0: the first accepted), as a peer that stopped reading and a network
    path that stopped would, until ``thaw(n)`` (what was held is then delivered, in order, as TCP
    would once the path is back). The other connections flow on. ``hold_replies(n)`` holds back
    only what the server sends: the client's requests reach the server, their answers wait on the
    way back (a relaying node paused after the leader answered, a client's host stalled).
    ``hold_requests(n)`` holds back only what the client sends, and ``pass_replies(n)`` lets the
    server's side flow again while the client's stays held."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.gates: list[asyncio.Event] = []
        self.reply_gates: list[asyncio.Event] = []
        self.request_gates: list[asyncio.Event] = []
        self.held: list[int] = []  # bytes each connection had to hold back while frozen
        self.held_requests: list[int] = []  # of them, the client's
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepted = asyncio.Event()

    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def connected(self, count: int) -> None:
        """Wait until ``count`` connections have been accepted."""
        while len(self.gates) < count:
            self._accepted.clear()
            await self._accepted.wait()

    def freeze(self, connection: int) -> None:
        self.gates[connection].clear()

    def hold_replies(self, connection: int) -> None:
        self.reply_gates[connection].clear()

    def hold_requests(self, connection: int) -> None:
        self.request_gates[connection].clear()

    def pass_replies(self, connection: int) -> None:
        self.reply_gates[connection].set()

    def thaw(self, connection: int) -> None:
        self.gates[connection].set()
        self.reply_gates[connection].set()
        self.request_gates[connection].set()

    async def quiet(self) -> None:
        """Wait until every connection has ended and what it held has been delivered."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _end_connections(self) -> None:
        for gate in self.gates + self.reply_gates + self.request_gates:
            gate.set()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        number = len(self.gates)
        gate, reply_gate, request_gate = asyncio.Event(), asyncio.Event(), asyncio.Event()
        gate.set()
        reply_gate.set()
        request_gate.set()
        self.gates.append(gate)
        self.reply_gates.append(reply_gate)
        self.request_gates.append(request_gate)
        self.held.append(0)
        self.held_requests.append(0)
        self._accepted.set()
        up_r, up_w = await asyncio.open_connection(*self.target)
        for src, dst, gates, counts in (
            (client_r, up_w, [gate, request_gate], [self.held, self.held_requests]),
            (up_r, client_w, [gate, reply_gate], [self.held]),
        ):
            task = asyncio.create_task(self._pump(src, dst, number, gates, counts))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        number: int,
        gates: list[asyncio.Event],
        counts: list[list[int]],
    ) -> None:
        try:
            while chunk := await src.read(1 << 16):
                if not all(gate.is_set() for gate in gates):
                    for held in counts:
                        held[number] += len(chunk)
                    for gate in gates:
                        await gate.wait()
                dst.write(chunk)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()


@asynccontextmanager
async def connected_through_a_freezing_proxy(
    settings: Settings, name: str
) -> AsyncIterator[tuple[NATS, FreezingProxy]]:
    """A service's connection (``eventstore.connect``, named ``name``) to the server of
    ``settings`` through a ``FreezingProxy``, whose connection 0 it is; thawed and closed at the
    end."""
    target = urlsplit(settings.nats_url)
    assert target.hostname is not None
    assert target.port is not None
    async with FreezingProxy(target.hostname, target.port) as proxy:
        proxied = msgspec.structs.replace(settings, nats_url=proxy.url())
        nc = await eventstore.connect(proxied, name)
        try:
            yield nc, proxy
        finally:
            proxy.thaw(0)
            await eventstore.close(nc)
