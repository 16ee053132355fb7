"""A connection's reading taken over from asyncio's streams (``ReceivedChunks``), over real
loopback sockets on asyncio's loop and on uvloop: nothing received is lost or reordered at the
takeover, the socket is no longer read while too much is unread, and the writer's close still
ends."""

from __future__ import annotations

import asyncio

import pytest

from jobrunner.common.receivedchunks import ReceivedChunks
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.waiting import until

pytestmark = pytest.mark.timeout(60)

LIMIT = 64 * 1024


async def _connected(
    send: bytes,
) -> tuple[asyncio.Server, asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter]:
    """A loopback server that sends ``send`` at once, and a client's streams connected to it;
    the server's writer last."""
    served: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(send)
        await writer.drain()
        served.set_result(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return server, reader, writer, await served


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
        server, reader, writer, peer = await _connected(b"HELLO\r\nheld by asyncio")
        assert await reader.readline() == b"HELLO\r\n"
        chunks = await ReceivedChunks.take_over(reader, writer, LIMIT)
        later = bytes(range(256)) * 1000
        peer.write(later)
        await peer.drain()
        peer.close()
        assert await _read_all(chunks) == b"held by asyncio" + later
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
        server.close()

    run_on(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_the_socket_is_not_read_while_more_than_twice_the_limit_waits(loop: str) -> None:
    """A reader that does not keep up stops the socket's reading past twice its limit (its
    memory bounded) and starts it again once it has read down to the limit; nothing is lost."""

    async def scenario() -> None:
        sent = b"x" * (8 * LIMIT)
        server, reader, writer, peer = await _connected(b"")
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
        peer.close()
        server.close()

    run_on(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_read_waiting_when_the_connection_is_closed_ends_with_nothing(loop: str) -> None:
    """The reader's own close while a read waits: the read ends (no hang), the close too."""

    async def scenario() -> None:
        server, reader, writer, peer = await _connected(b"")
        chunks = await ReceivedChunks.take_over(reader, writer, LIMIT)
        waiting = asyncio.ensure_future(chunks.read())
        await until(lambda: chunks._waiter is not None, "the read waiting", 0)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
        assert await asyncio.wait_for(waiting, 5) == b""
        peer.close()
        server.close()

    run_on(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("told", [True, False])
def test_a_connection_ended_before_the_takeover_is_read_to_its_end_at_once(
    loop: str, told: bool
) -> None:
    """A connection dropped just before its reading is taken over (its end told to asyncio's
    reader already, or not yet): the read ends at once, no wait for data that cannot come."""

    async def scenario() -> None:
        server, reader, writer, peer = await _connected(b"")
        writer.transport.abort()
        if told:
            await asyncio.wait_for(writer.wait_closed(), 5)
        chunks = await ReceivedChunks.take_over(reader, writer, LIMIT)
        assert await asyncio.wait_for(chunks.read(), 5) == b""
        peer.close()
        server.close()

    run_on(loop, scenario())
