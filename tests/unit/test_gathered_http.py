"""The API's HTTP writes gathered per event loop turn (gatheredhttp): one socket write for what a
response writes in one turn, in order, nothing held past the turn or lost at a close."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn

from jobrunner.services.api.gatheredhttp import (
    WRITE_AT_BYTES,
    GatheringHttpToolsProtocol,
    GatheringTransport,
)


class CountedTransport:
    """A real socket transport, its writes counted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def _connected() -> tuple[CountedTransport, socket.socket]:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    peer.setblocking(False)
    return CountedTransport(transport), peer  # type: ignore[arg-type]


async def _received(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(10):
        while len(data) < size:
            data += await loop.sock_recv(peer, size - len(data))
    return data


async def test_writes_of_one_turn_go_in_one_write_in_order() -> None:
    counted, peer = await _connected()
    gathering = GatheringTransport(counted, asyncio.get_running_loop())  # type: ignore[arg-type]
    gathering.write(b"HTTP/1.1 200 OK\r\n\r\n")
    gathering.write(b"body")
    assert counted.writes == []  # not yet: the turn goes on
    assert await _received(peer, 23) == b"HTTP/1.1 200 OK\r\n\r\nbody"
    assert counted.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    gathering.write(b"next")  # a later turn's write goes in a write of its own
    assert await _received(peer, 4) == b"next"
    assert len(counted.writes) == 2
    gathering.close()
    peer.close()


async def test_a_close_writes_what_was_gathered_first() -> None:
    counted, peer = await _connected()
    gathering = GatheringTransport(counted, asyncio.get_running_loop())  # type: ignore[arg-type]
    gathering.write(b"0\r\n\r\n")
    gathering.close()
    assert await _received(peer, 5) == b"0\r\n\r\n"
    peer.close()


async def test_a_large_write_is_not_held() -> None:
    counted, peer = await _connected()
    gathering = GatheringTransport(counted, asyncio.get_running_loop())  # type: ignore[arg-type]
    gathering.write(b"x" * WRITE_AT_BYTES)
    assert len(counted.writes) == 1
    assert len(await _received(peer, WRITE_AT_BYTES)) == WRITE_AT_BYTES
    gathering.close()
    peer.close()


async def test_uvicorn_answers_through_it() -> None:
    """A response and a streamed one, whole and in order, over keep-alive."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/stream":
            for part in (b"a", b"b", b"c"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
                await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"end"})

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, http=GatheringHttpToolsProtocol, log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if serving.done():
                    serving.result()
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(3):
                assert (await client.get("/")).content == b"end"
                assert (await client.get("/stream")).content == b"abcend"
    finally:
        server.should_exit = True
        await serving
