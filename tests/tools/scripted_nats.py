"""A NATS server that sends what a test wrote: its INFO (the test's ``max_payload``), a PONG for
every PING, and once its client has subscribed, the test's bytes, as a broken or hostile server
would put them on the wire. Not a mock of nats-server's behaviour: only enough of the protocol to
get a stream reader to its first read, then whatever bytes the test chose. With ``then_filler``
it keeps writing that many bytes more (a server that never ends a frame), until the client hangs
up; with ``hang_up`` it hangs up itself once it has written them (its FIN right behind them).

The reader's consumer is created through nats-py on a real server (``open`` needs JetStream);
its messages go to an inbox the real server has no subscriber for, so they never interfere."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from tests.tools.loopback_server import LoopbackServer


class ScriptedNats(LoopbackServer):
    def __init__(
        self,
        frames: bytes,
        info: dict[str, Any] | None = None,
        then_filler: int = 0,
        hang_up: bool = False,
    ) -> None:
        self.frames = frames
        self.hang_up = hang_up
        self.info = {"server_id": "scripted", "version": "2.11.0", "proto": 1, "headers": True}
        self.info |= {"max_payload": 1 << 20} if info is None else info
        self.then_filler = then_filler
        self.filler_sent = 0  # bytes of filler written before the client hung up
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def _end_connections(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:  # its connections are closed now: nothing left to wait for
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._talk(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _talk(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            try:
                writer.write(b"INFO " + json.dumps(self.info).encode() + b"\r\n")
                subscribed = False
                while line := await reader.readline():
                    if line.startswith(b"SUB "):
                        subscribed = True
                    elif line.startswith(b"PING"):
                        writer.write(b"PONG\r\n")
                        if subscribed:  # the reader's open waits for this PONG, then reads
                            break
                await writer.drain()
                writer.write(self.frames)
                await writer.drain()
                filler = b"x" * 65536
                while self.filler_sent < self.then_filler:
                    writer.write(filler)
                    await writer.drain()
                    self.filler_sent += len(filler)
                if not self.hang_up:
                    await reader.read()  # until the client hangs up
            finally:
                writer.close()
