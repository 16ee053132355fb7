"""uvicorn's HTTP protocol (httptools) with a connection's writes gathered for the rest of the
event loop's turn: what a response writes in one turn goes to the socket in one write.

uvicorn writes a response's head as soon as the app sends ``http.response.start``, and each body
part as it comes: a JSON answer took two ``write(2)`` calls (head, then body), an SSE stream's
head and its first part (the ``retry:`` field) two more. Each write on loopback runs the
receiving side's work and wakes the client; on a dispatch that was 4 of the API's 10 socket
writes. Gathered, the head goes out with what follows it in the same turn, at the latest when
the loop runs its next callbacks (``call_soon``): never held back waiting for more.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Gathered bytes are written at once past this size (a large body part is not copied again).
WRITE_AT_BYTES = 64 * 1024


class GatheringTransport:
    """A transport whose writes of one loop turn reach the socket as one write. Everything
    else (flow control, closing, peer addresses) is the wrapped transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._parts:
            self._loop.call_soon(self._write_gathered)
        self._parts.append(bytes(data))
        self._size += len(data)
        if self._size >= WRITE_AT_BYTES:
            self._write_gathered()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _write_gathered(self) -> None:
        if not self._parts:
            return
        data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def write_eof(self) -> None:
        self._write_gathered()
        self._transport.write_eof()

    def close(self) -> None:
        # What the response wrote last (a stream's final chunk) goes before the close.
        self._write_gathered()
        self._transport.close()

    def abort(self) -> None:
        self._parts.clear()
        self._size = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GatheringHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a ``GatheringTransport``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        gathering = GatheringTransport(transport, self.loop)
        super().connection_made(gathering)  # type: ignore[arg-type]
