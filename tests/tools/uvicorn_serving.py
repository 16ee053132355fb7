"""A real uvicorn serving an ASGI app in the test's own event loop, on a socket of the test's."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn


async def start_serving(server: uvicorn.Server, listener: socket.socket) -> asyncio.Task[None]:
    """``server`` serving on ``listener``, once it has started (its error, if it failed to)."""
    task = asyncio.create_task(server.serve(sockets=[listener]))
    async with asyncio.timeout(30):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    return task


async def stop_serving(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await asyncio.wait_for(task, 30)


@asynccontextmanager
async def serving(app: Any, **config: Any) -> AsyncIterator[str]:
    """``app`` served by uvicorn (``config``: its options) on a free loopback port: its base
    URL."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", **config))
        task = await start_serving(server, listener)
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            await stop_serving(server, task)
