"""A connection's reading taken over from asyncio's streams (``ReceivedChunks``), over real
loopback sockets on asyncio's loop and on uvloop: nothing received is lost or reordered at the
takeover, the socket is no longer read while too much is unread, and the writer's close still
ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from jobrunner.common.receivedchunks import ReceivedChunks
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.loopback_server import LoopbackServer
from tests.tools.waiting import until

pytestmark = pytest.mark.timeout(60)

# The tests read ``ReceivedChunks``' private fields (``_buffered``, ``_waiter``) and asyncio's
# (``StreamReader._eof``) where what they check has no public face: how much is held unread,
# that a read is waiting, that asyncio's reader has seen the peer's end. Waiting on those
# instead of sleeping keeps the tests independent of the machine's speed.

LIMIT = 64 * 1024


class SendingServer(LoopbackServer):
    """Sends ``send`` to each client at once; ``peer``: its writer to the first (the test's
    end of the server side). Once left, that connection is closed."""

    def __init__(self, send: bytes) -> None:
        self._send = send
        self.peer: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def _serve(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self._send)
        await writer.drain()
        if not self.peer.done():
            self.peer.set_result(writer)

    async def _end_connections(self) -> None:
        if self.peer.done():
            self.peer.result().close()


@contextlib.asynccontextmanager
async def _connected(
    send: bytes,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter]]:
    """A client's streams connected to a ``SendingServer`` of ``send``, and the server's
    writer to it last."""
    async with SendingServer(send) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            yield reader, writer, await server.peer
        finally:
            writer.close()


async def _read_all(chunks: ReceivedChunks) -> bytes:
    received = b""
    while chunk := await chunks.read():
        received += chunk
    return received


@pytest.mark.parametrize("loop", LOOPS)
def test_what_was_received_before_the_takeover_is_read_first_then_the_rest_in_order(
    loop: str,
) -> None:
    """Bytes asyncio's reader held when the reading is taken over come first, then every
    later read in order, and the peer's close ends the reading."""

    async def scenario() -> None:
        async with _connected(b"HELLO\r\nheld by asyncio") as (reader, writer, peer):
            assert await reader.readline() == b"HELLO\r\n"
            chunks = await ReceivedChunks.take_over(reader, writer, LIMIT)
            later = bytes(range(256)) * 1000
            peer.write(later)
            await peer.drain()
            peer.close()
            assert await _read_all(chunks) == b"held by asyncio" + later
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)

    run_on(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_the_socket_is_not_read_while_more_than_twice_the_limit_waits(loop: str) -> None:
    """A reader that does not keep up stops the socket's reading past twice its limit (its
    memory bounded) and starts it again once it has read down to the limit; nothing is lost."""

    async def scenario() -> None:
        sent = b"x" * (8 * LIMIT)
        async with _connected(b"") as (reader, writer, peer):
            chunks = await ReceivedChunks.take_over(reader, writer, LIMIT)
            peer.write(sent)
            transport = writer.transport
            await until(lambda: not transport.is_reading(), "the socket's reading paused", 0, 10)
            assert chunks._buffered > 2 * LIMIT
            assert chunks._buffered <= 2 * LIMIT + 256 * 1024  # one more read at most
            received = b""
            while len(received) < len(sent):
                received += await chunks.read()
            assert transport.is_reading()
            assert received == sent
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)

    run_on(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_read_waiting_when_the_connection_is_closed_ends_with_nothing(loop: str) -> None:
    """The reader's own close while a read waits: the read ends (no hang), the close too."""

    async def scenario() -> None:
        async with _connected(b"") as (reader, writer, _):
            chunks = await ReceivedChunks.take_over(reader, writer, LIMIT)
            waiting = asyncio.ensure_future(chunks.read())
            await until(lambda: chunks._waiter is not None, "the read waiting", 0)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
            assert await asyncio.wait_for(waiting, 5) == b""

    run_on(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("told", [True, False])
def test_a_connection_ended_before_the_takeover_is_read_to_its_end_at_once(
    loop: str, told: bool
) -> None:
    """A connection dropped just before its reading is taken over (its end told to asyncio's
    reader already, or not yet): the read ends at once, no wait for data that cannot come."""

    async def scenario() -> None:
        async with _connected(b"") as (reader, writer, _):
            writer.transport.abort()
            if told:
                await asyncio.wait_for(writer.wait_closed(), 5)
            chunks = await ReceivedChunks.take_over(reader, writer, LIMIT)
            assert await asyncio.wait_for(chunks.read(), 5) == b""

    run_on(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_peer_that_hung_up_before_the_takeover_ends_the_reading_at_once(loop: str) -> None:
    """The server sends its last line and hangs up (its FIN) before the reading is taken over,
    and asyncio's reader has seen that end: on plain TCP asyncio keeps the socket half-open
    then (the connection is not closing), yet the reading hands on the rest and ends at once,
    not waiting for data that cannot come."""

    async def scenario() -> None:
        async with _connected(b"PONG\r\nlast") as (reader, writer, peer):
            peer.close()
            assert await reader.readline() == b"PONG\r\n"

            def saw_the_end() -> bool:
                return bool(reader._eof)  # type: ignore[attr-defined]

            await until(saw_the_end, "asyncio's reader saw the end", 0, 5)
            assert not writer.transport.is_closing()  # what the takeover cannot go by alone
            chunks = await ReceivedChunks.take_over(reader, writer, LIMIT)
            assert await asyncio.wait_for(_read_all(chunks), 5) == b"last"

    run_on(loop, scenario())
