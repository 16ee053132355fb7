"""A link with latency in front of a real server: a TCP proxy that forwards every chunk, both
ways and in order, ``seconds`` after it came (a service on another host, or across a slow
network). Not a mock: every byte is the real server's or the real client's."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def latency_proxy(target_host: str, target_port: int, seconds: float) -> AsyncIterator[str]:
    """The proxy's URL, for as long as the context lasts."""
    tasks: set[asyncio.Task[None]] = set()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send_later() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sending = asyncio.create_task(send_later())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + seconds, data))
                if not data:
                    break
            await sending
        except (ConnectionError, OSError):
            pass  # the other side went away: nothing more to forward
        finally:
            # Also when cancelled (the context ends): no task or socket outlives the proxy.
            sending.cancel()
            writer.close()

    async def serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        both = [
            asyncio.create_task(forward(client_r, server_w)),
            asyncio.create_task(forward(server_r, client_w)),
        ]
        tasks.update(both)
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
