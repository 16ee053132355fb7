"""A connection's reads handed on as the transport received them: no copy of their bytes.

asyncio's ``StreamReader`` copies every byte received three times before its ``read`` returns
it (appended to its ``bytearray``, sliced, made ``bytes``): over 3 % of a replay's loading
instructions (``bench/RESULTS.md``, session 40). ``ReceivedChunks`` takes over an open
connection's reading from its ``StreamReaderProtocol`` (the connect, TLS and the handshake stay
with asyncio's streams) and ``read`` returns each ``bytes`` object the transport made from the
socket, as it is.

The rest of the connection's life still goes through the ``StreamReaderProtocol`` it replaces:
write flow control (so ``StreamWriter.drain`` still waits while the socket is full), the end of
the connection (so ``StreamWriter.wait_closed`` ends), an EOF. What it holds is bounded as the
``StreamReader``'s was: past twice its limit, the transport stops reading until ``read`` has
taken some.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ReceivedChunks(asyncio.Protocol):
    """The reads of ``writer``'s connection from now on, after what its ``reader`` still held."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._inner: asyncio.StreamReaderProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self._paused = False

    @classmethod
    async def take_over(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int
    ) -> ReceivedChunks:
        """Read ``writer``'s connection from now on, instead of ``reader``; what ``reader``
        received already and nobody read comes first."""
        chunks = cls(limit)
        transport = writer.transport
        # ``reader._eof``: the peer's end (its FIN) was told to ``reader`` already. On plain TCP
        # its protocol keeps the transport half-open then (``eof_received`` returns True), so
        # ``is_closing`` stays False, and no event would ever tell this reader of that end.
        # ``StreamReader`` has no public "EOF received" (``at_eof`` is False while it holds
        # bytes), hence the private field.
        if transport.is_closing() or reader._eof:  # type: ignore[attr-defined]
            # Ending (or ended): nothing more comes, what ``reader`` holds is all.
            chunks._eof = True
        else:
            inner = transport.get_protocol()
            assert isinstance(inner, asyncio.StreamReaderProtocol)
            chunks._inner = inner
            chunks._transport = transport  # type: ignore[assignment]
            transport.set_protocol(chunks)
        # Nothing reaches ``reader`` any more: an EOF makes its ``read`` return what it holds,
        # and then nothing. Put before anything received meanwhile, whether ``read`` waited or
        # not: ``reader`` received it first.
        reader.feed_eof()
        held = await reader.read()
        if held:
            chunks._chunks.appendleft(held)
            chunks._buffered += len(held)
        return chunks

    async def read(self) -> bytes:
        """The oldest read not handed out yet (each at most what the transport reads at once);
        ``b""`` at the connection's end, or its error raised."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= self._limit and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if not self._paused and self._buffered > 2 * self._limit and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._transport = None
        self._wake()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
