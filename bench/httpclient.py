"""A lean keep-alive HTTP/1.1 client for the read measurements: one connection, one request at a
time, the body read by its ``Content-Length`` (or chunks).

httpx spends about as much CPU on a request as the API spends answering it (measured with the
API's and the client's CPU time over the same 600 requests: 1.8-2.7 ms each on the shared
machine), so a measurement through it says as much about httpx as about the API. This client
costs a small part of that; the status and the JSON body are all the reads need.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import msgspec


class Response:
    __slots__ = ("body", "status_code")

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class LeanClient:
    """``await client.get(path, params)`` over one kept-alive connection."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head = f"Host: {host}:{port}\r\nAccept: application/json\r\n{extra}\r\n".encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> LeanClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()

    async def get(self, path: str, params: dict[str, Any] | None = None) -> Response:
        assert self._reader is not None
        assert self._writer is not None
        target = f"{path}?{urlencode(params, doseq=True)}" if params else path
        self._writer.write(b"GET " + target.encode() + b" HTTP/1.1\r\n" + self._head)
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if length is not None:
            body = await self._reader.readexactly(length)
        elif chunked:
            parts = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self._reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(p[:-2] for p in parts)
        else:
            body = b""
        return Response(status, body)
