"""A fault between a publish and its ack: a TCP proxy in front of a real nats-server that, once
armed with a subject, holds back everything the server sends on the connection that publishes
to it, from the moment that publish goes to the server. The message is stored (``stored()``
sees the server's ack to the publish's reply inbox among the held bytes); its ack (and whatever
else the server says on that connection) waits until ``release()``, or is dropped with the
connection by ``cut()`` (the server killed before the ack left). Not a mock: every byte that
does flow is the real server's.

Deterministic where a SIGSTOP right after a publish is not: the kernel may deliver the server's
ack before the stop lands, or the stop land before the server read the publish. The test
freezes or kills the real server as well, once ``stored()``."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from tests.tools.loopback_server import LoopbackServer


@dataclass
class _Connection:
    client_w: asyncio.StreamWriter
    up_w: asyncio.StreamWriter
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    held: bytearray = field(default_factory=bytearray)  # what the server sent while shut
    tail: bytes = b""  # the end of what the client sent last: a control line split in two
    control: bytes = b""  # the held publish's control line, while its end is not read yet
    reply: bytes | None = None  # the held publish's reply inbox, where its ack comes
    swallowing: bool = False  # from the armed publish on, nothing more reaches the server
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class AckHoldingProxy(LoopbackServer):
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.hit = asyncio.Event()
        self.held: _Connection | None = None
        self._trigger: bytes | None = None
        self._swallow = False
        self._connections: list[_Connection] = []

    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def arm(self, subject: str, prefix: bool = False, swallow: bool = False) -> None:
        """Hold the next connection that publishes to exactly ``subject`` (``prefix``: to a
        subject that starts with it) after this call. ``swallow``: that publish never reaches
        the server, nor anything after it on that connection (a publish lost on the way, not
        stored); end it with ``cut()``, the connection's stream being broken."""
        self._swallow = swallow
        self.hit.clear()
        self.held = None
        # A publish's control line: ``PUB <subject> ...`` or ``HPUB <subject> ...``.
        self._trigger = f"PUB {subject}{'' if prefix else ' '}".encode()
        for connection in self._connections:
            connection.tail = b""  # a publish sent before arming is not this one

    async def stored(self, timeout: float = 10.0) -> bool:
        """Whether the server acked the held publish (stored it) in time: its answer to the
        publish's reply inbox, held back, says so (no ``error``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while (ack := self._held_ack()) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)  # the proxy's reader fills it: poll
                return b'"error"' not in ack
        return False

    def _held_ack(self) -> bytes | None:
        """The payload of the server's ``MSG``/``HMSG`` to the held publish's reply inbox."""
        connection = self.held
        if connection is None or connection.reply is None:
            return None
        held = connection.held
        at = held.find(b"MSG " + connection.reply + b" ")
        end = held.find(b"\r\n", at) if at >= 0 else -1
        if end < 0:
            return None
        size = int(held[at:end].split()[-1])  # HMSG: headers and payload
        ack = bytes(held[end + 2 : end + 2 + size])
        return ack if len(ack) == size else None

    def release(self) -> None:
        """Deliver what was held, in order, as TCP would once the path is back."""
        self._trigger = None
        for connection in self._connections:
            if not connection.gate.is_set():
                if not connection.client_w.is_closing():
                    connection.client_w.write(bytes(connection.held))
                connection.held.clear()
                connection.gate.set()

    def cut(self) -> None:
        """Drop the held connection, its held bytes undelivered (the server died first)."""
        self._trigger = None
        if self.held is None:
            return
        for task in self.held.tasks:
            task.cancel()
        for writer in (self.held.client_w, self.held.up_w):
            writer.transport.abort()

    async def _end_connections(self) -> None:
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
        try:
            while chunk := await src.read(1 << 16):
                # Before the chunk leaves: no ack slips through.
                chunk = self._watch(connection, chunk)
                connection.up_w.write(chunk)
                await connection.up_w.drain()
        except ConnectionError:
            pass
        finally:
            connection.up_w.close()

    def _watch(self, connection: _Connection, chunk: bytes) -> bytes:
        """Shut the connection's gate at a publish to the armed subject, and note its reply
        inbox (from its control line, which may end in a later chunk). What of ``chunk`` goes
        on to the server: all of it, unless the armed publish is swallowed."""
        if connection.swallowing:
            return b""
        seen = connection.tail + chunk
        connection.tail = seen[-256:]
        if connection.control:
            self._read_control(connection, connection.control + chunk)
            return chunk
        trigger = self._trigger
        if trigger is None:
            return chunk
        # Only a match that ends in this chunk: one wholly in the tail was matched (or not
        # armed for) when it went out.
        at = seen.find(trigger, max(0, len(seen) - len(chunk) - len(trigger) + 1))
        if at < 0:
            return chunk
        if self._swallow:
            # What came before the publish goes on; the publish's start may be in the tail
            # (sent already, a control line split in two): then the server never gets its end.
            if seen[at - 1 : at] == b"H":
                at -= 1  # HPUB: its H too
            connection.swallowing = True
            self._trigger = None
            self.held = connection
            self.hit.set()
            return chunk[: max(0, at - (len(seen) - len(chunk)))]
        connection.gate.clear()
        connection.held.clear()
        connection.reply = None
        self._trigger = None
        self.held = connection
        self.hit.set()
        self._read_control(connection, seen[at:])
        return chunk

    @staticmethod
    def _read_control(connection: _Connection, data: bytes) -> None:
        end = data.find(b"\r\n")
        if end < 0:
            connection.control = data
            return
        connection.control = b""
        # From "PUB": PUB <subject> [reply] <size>, or (H)PUB <subject> [reply] <hdr> <size>.
        fields = data[:end].split()
        has_reply = len(fields) > 2 and not fields[2].isdigit()
        connection.reply = fields[2] if has_reply else None

    async def _to_client(self, src: asyncio.StreamReader, connection: _Connection) -> None:
        try:
            while chunk := await src.read(1 << 16):
                if not connection.gate.is_set():
                    connection.held += chunk  # release() delivers it, first
                    continue
                connection.client_w.write(chunk)
                await connection.client_w.drain()
        except ConnectionError:
            pass
        finally:
            connection.client_w.close()
