"""A fault between a publish and its ack: a TCP proxy in front of a real nats-server that, once
armed with a subject, holds back everything the server sends on the connection that publishes
to it, from the moment that publish goes to the server. The message is stored; its ack (and
whatever else the server says on that connection) waits until ``release()``, or is dropped with
the connection by ``cut()`` (the server killed before the ack left). Not a mock: every byte
that does flow is the real server's.

Deterministic where a SIGSTOP right after a publish is not: the kernel may deliver the server's
ack before the stop lands. The test freezes or kills the real server as well, once ``hit``."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class _Connection:
    client_w: asyncio.StreamWriter
    up_w: asyncio.StreamWriter
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0  # bytes the server sent while the gate was shut
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class AckHoldingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.hit = asyncio.Event()
        self.held: _Connection | None = None
        self._trigger: bytes | None = None
        self._connections: list[_Connection] = []
        self._server: asyncio.Server | None = None

    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def arm(self, subject: str, prefix: bool = False) -> None:
        """Hold the next connection that publishes to exactly ``subject`` (``prefix``: to a
        subject that starts with it)."""
        self.hit.clear()
        self.held = None
        # A publish's control line: ``PUB <subject> ...`` or ``HPUB <subject> ...``.
        self._trigger = f"PUB {subject}{'' if prefix else ' '}".encode()

    async def ack_waiting(self, timeout: float = 10.0) -> bool:
        """Whether the server answered on the held connection (its ack, stored) in time."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.held is None or self.held.held == 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
                return True
        return False

    def release(self) -> None:
        """Deliver what was held, in order, as TCP would once the path is back."""
        for connection in self._connections:
            connection.gate.set()
        self._trigger = None

    def cut(self) -> None:
        """Drop the held connection, its held bytes undelivered (the server died first)."""
        self._trigger = None
        if self.held is None:
            return
        for task in self.held.tasks:
            task.cancel()
        for writer in (self.held.client_w, self.held.up_w):
            writer.transport.abort()

    async def __aenter__(self) -> AckHoldingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for connection in self._connections:
            for task in connection.tasks:
                task.cancel()
            for writer in (connection.client_w, connection.up_w):
                writer.transport.abort()
        tasks = [task for c in self._connections for task in c.tasks]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()  # the server is down: the client tries again
            return
        connection = _Connection(client_w, up_w)
        connection.gate.set()
        self._connections.append(connection)
        connection.tasks = [
            asyncio.create_task(self._to_server(client_r, connection)),
            asyncio.create_task(self._to_client(up_r, connection)),
        ]

    async def _to_server(self, src: asyncio.StreamReader, connection: _Connection) -> None:
        tail = b""
        try:
            while chunk := await src.read(1 << 16):
                trigger = self._trigger
                if trigger is not None and trigger in tail + chunk:
                    # Shut before the publish leaves: its ack cannot slip through.
                    connection.gate.clear()
                    self._trigger = None
                    self.held = connection
                    self.hit.set()
                tail = chunk[-256:]
                connection.up_w.write(chunk)
                await connection.up_w.drain()
        except ConnectionError:
            pass
        finally:
            connection.up_w.close()

    async def _to_client(self, src: asyncio.StreamReader, connection: _Connection) -> None:
        try:
            while chunk := await src.read(1 << 16):
                if not connection.gate.is_set():
                    connection.held += len(chunk)
                    await connection.gate.wait()
                connection.client_w.write(chunk)
                await connection.client_w.drain()
        except ConnectionError:
            pass
        finally:
            connection.client_w.close()
