"""Publishes lost with no reconnect: a TCP proxy in front of a real nats-server that, told to,
swallows the next publishes to subjects under a prefix. The server never sees them, so it
neither stores nor answers them, and the connection stays up: what a client sees of a stream
without a leader for a moment (a cluster electing one drops the publishes it gets meanwhile).
Every other byte is the real server's or the real client's, in order."""

from __future__ import annotations

import asyncio
import contextlib

from tests.tools.loopback_server import LoopbackServer


class PublishDroppingProxy(LoopbackServer):
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.dropped = 0
        self._prefix = b""
        self._to_drop = 0
        self._to_pass = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.StreamWriter] = []

    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def drop(self, prefix: str, count: int, after: int = 0) -> None:
        """Swallow ``count`` publishes to a subject that starts with ``prefix``, after letting
        the next ``after`` of them through."""
        self._prefix = prefix.encode()
        self._to_drop = count
        self._to_pass = after

    async def _end_connections(self) -> None:
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers += [client_w, up_w]
        self._tasks += [
            asyncio.create_task(self._to_server(client_r, up_w)),
            asyncio.create_task(self._copy(up_r, client_w)),
        ]

    async def _to_server(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Whole protocol frames on, but the publishes to drop (a frame split across reads is
        kept until its end has come)."""
        pending = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := await src.read(1 << 16):
                pending += chunk
                out = bytearray()
                while (frame := self._next_frame(pending)) is not None:
                    if not self._dropped(frame):
                        out += frame
                if out:
                    dst.write(out)
                    await dst.drain()
        dst.close()

    @staticmethod
    def _next_frame(pending: bytearray) -> bytes | None:
        """The first complete frame, taken off ``pending``; None until one is complete.
        ``PUB <subject> [reply] <size>`` and ``HPUB <subject> [reply] <headers> <size>`` carry
        a payload of ``size`` bytes and a CRLF; every other client frame is one line."""
        end = pending.find(b"\r\n")
        if end < 0:
            return None
        line = bytes(pending[:end])
        length = end + 2
        if line[:4].upper() in (b"PUB ", b"HPUB"):
            length += int(line.split()[-1]) + 2
            if len(pending) < length:
                return None
        frame = bytes(pending[:length])
        del pending[:length]
        return frame

    def _dropped(self, frame: bytes) -> bool:
        if self._to_drop <= 0 or frame[:4].upper() not in (b"PUB ", b"HPUB"):
            return False
        if not frame.split(maxsplit=2)[1].startswith(self._prefix):
            return False
        if self._to_pass > 0:
            self._to_pass -= 1
            return False
        self._to_drop -= 1
        self.dropped += 1
        return True

    @staticmethod
    async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await src.read(1 << 16):
                dst.write(chunk)
                await dst.drain()
        dst.close()
