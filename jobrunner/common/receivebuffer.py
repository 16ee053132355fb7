"""A connection's incoming bytes, received into one buffer and parsed where they landed.

An ``asyncio.StreamReader`` costs a bulk reader four copies of every byte: ``recv`` into a new
``bytes``, that appended to its ``bytearray``, ``read`` slicing it out and turning the slice into
``bytes``, and the rest shifted to the front; the parser then joins a frame cut by the read to
the next read, and slices each body out once more. ``ReceiveBuffer`` is a
``BufferedProtocol``: the kernel's ``recv_into`` (or the TLS layer's ``read`` into a buffer)
writes straight after what is held, the parser reads ``buffer[start:end]`` in place and moves
``start`` on, and each body is copied out once. What is left unparsed, the frame a read cut, is
moved to the front only when the room after it runs short.

Bounded whatever the server sends: reading pauses while less than ``READ_ROOM`` would be left
even with the rest moved to the front, and resumes once the parser has made room. A consumer
that does not read holds at most the buffer; the kernel's socket buffer and TCP hold the rest,
and a JetStream consumer's flow control (answered only by the parser) stops the server.
"""

from __future__ import annotations

import asyncio
from typing import cast

BUFFER_SIZE = 1 << 20  # received and not yet parsed, at most (a larger frame grows it, once)
READ_ROOM = 64 << 10  # the least a socket read is offered: less, and reading pauses


class ReceiveBuffer(asyncio.BufferedProtocol):
    """``buffer[start:end]`` is what has arrived and has not been parsed; the parser reads it
    in place, then calls ``parsed`` with where it stopped."""

    def __init__(self) -> None:
        self.buffer = bytearray(BUFFER_SIZE)
        self.start = 0
        self.end = 0
        self.transport: asyncio.Transport | None = None
        # How the connection ended: an OSError, or None with ``eof`` when the server closed it.
        self.error: OSError | None = None
        self.eof = False
        self.lost = False
        self._paused = False
        self._arrived: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None

    # --- the transport's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream's: it reads and writes

    def get_buffer(self, sizehint: int) -> memoryview:
        if len(self.buffer) - self.end < READ_ROOM:
            self._move_rest_to_front()
        return memoryview(self.buffer)[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        if len(self.buffer) - (self.end - self.start) < READ_ROOM:
            assert self.transport is not None
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # the transport closes itself: nothing more is sent on a closed link

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and self.error is None:
            self.error = exc if isinstance(exc, OSError) else ConnectionError(repr(exc))
        elif exc is None:
            self.eof = True
        self._wake()
        for waiter in (self._writable, self._closed):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # --- the parser's side

    @property
    def ended(self) -> bool:
        """Nothing more will arrive (what has arrived may still hold frames)."""
        return self.eof or self.error is not None

    async def arrival(self) -> None:
        """Returns when more bytes have arrived or the connection has ended."""
        if self.ended:
            return
        self._arrived = asyncio.get_running_loop().create_future()
        try:
            await self._arrived
        finally:
            self._arrived = None

    async def writable(self) -> None:
        """Returns once what was written is below the transport's high-water mark (at once,
        unless the server stops reading)."""
        while self._writable is not None and not self.lost:
            await self._writable

    def parsed(self, pos: int, frame_size: int = 0) -> None:
        """Everything before ``pos`` is parsed; ``frame_size`` is the whole size of the frame
        that starts there, when known, so that it fits however large (NATS' ``max_payload``
        can exceed the buffer)."""
        self.start = pos
        if pos == self.end:
            self.start = self.end = 0  # nothing to move: the next read lands at the front
            if len(self.buffer) > BUFFER_SIZE:
                self.buffer = bytearray(BUFFER_SIZE)  # a large frame's room, given back
        elif frame_size > len(self.buffer) - READ_ROOM:
            larger = bytearray(frame_size + READ_ROOM)
            rest = self.end - self.start
            larger[:rest] = self.buffer[self.start : self.end]
            self.buffer, self.start, self.end = larger, 0, rest
        if self._paused and len(self.buffer) - (self.end - self.start) >= READ_ROOM:
            self._paused = False
            if not self.lost:
                assert self.transport is not None
                self.transport.resume_reading()

    @property
    def full(self) -> bool:
        """What is held unparsed leaves no room for a read."""
        return len(self.buffer) - (self.end - self.start) < READ_ROOM

    async def close(self) -> None:
        if self.transport is None or self.lost:
            return
        self._closed = asyncio.get_running_loop().create_future()
        self.transport.close()
        await self._closed

    def _move_rest_to_front(self) -> None:
        rest = self.end - self.start
        # Same length: never a resize, so a view the transport may hold stays valid.
        self.buffer[:rest] = self.buffer[self.start : self.end]
        self.start, self.end = 0, rest

    def _wake(self) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
