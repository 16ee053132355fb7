"""An HTTP server that answers a job's read with a running job and its event stream with one
fixed status: what ``jobrunner logs --follow`` meets when the API has a bug (500) or a proxy
in front of it has lost it (502, 503, 504)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any


class AnsweringServer:
    def __init__(self, stream_status: int, stream_error: dict[str, str]) -> None:
        self.stream_status = stream_status
        self.stream_error = stream_error
        self.stream_requests = 0
        self.url = ""

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            if path.endswith("/stream"):
                self.stream_requests += 1
                body: dict[str, Any] = {"error": self.stream_error}
                status = self.stream_status
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

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AnsweringServer]:
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            server.close()
