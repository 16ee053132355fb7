"""An HTTP server that answers a job's read with a running job and its event stream with one
fixed status: what ``jobrunner logs --follow`` meets when the API has a bug (500) or a proxy
in front of it has lost it (502, 503, 504). With ``then`` it answers the stream with each of the
statuses once and afterwards as ``then`` says: ``"silent"`` accepts and never answers (a host
that hangs), ``"headers"`` answers the stream's headers and then nothing, ``"stream"`` answers
the stream after ``stream_after`` s with a keep-alive and the job's ``done`` (``done_after`` s
after the keep-alive: a quiet job)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any


class AnsweringServer:
    def __init__(
        self,
        stream_status: int | tuple[int, ...],
        stream_error: dict[str, str],
        then: str | None = None,
        stream_after: float = 0.0,
        done_after: float = 0.0,
    ) -> None:
        # One status for every stream, or these in turn and then ``then``.
        self.stream_statuses = (stream_status,) if isinstance(stream_status, int) else stream_status
        self.stream_error = stream_error
        self.then = then
        self.stream_after = stream_after
        self.done_after = done_after
        self.stream_requests = 0
        self.url = ""
        self._closing = asyncio.Event()  # set at the end: a silent answer ends

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            if (
                path.endswith("/stream")
                and self.then
                and self.stream_requests >= len(self.stream_statuses)
            ):
                self.stream_requests += 1
                if self.then != "silent":
                    await asyncio.sleep(self.stream_after)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        b"Connection: close\r\n\r\n"
                    )
                    if self.then == "stream":
                        writer.write(b": keep-alive\n\n")
                        await writer.drain()
                        await asyncio.sleep(self.done_after)
                        writer.write(self._done_event())
                    await writer.drain()
                if self.then != "stream":
                    await self._closing.wait()
                return
            if path.endswith("/stream"):
                self.stream_requests += 1
                body: dict[str, Any] = {"error": self.stream_error}
                status = self.stream_statuses[
                    min(self.stream_requests, len(self.stream_statuses)) - 1
                ]
            else:
                job_id = path.rsplit("/", 1)[-1]
                status, body = 200, {"id": job_id, "status": "running", "job_type": "emit"}
            content = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n".encode()
                + content
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _done_event() -> bytes:
        done = json.dumps({"status": "completed", "exit_code": 0})
        return f"event: done\ndata: {done}\n\n".encode()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AnsweringServer]:
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self._closing.set()
            server.close()
