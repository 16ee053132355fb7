"""A local HTTP receiver for webhook tests: records every POST, answers what the test says.

A real HTTP server (uvicorn, in the test's event loop) with a tiny ASGI app, so the notifier
talks to it exactly as to a receiver elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from jobrunner.embedded.serverprocess import bind_free_port
from tests.tools.uvicorn_serving import start_serving, stop_serving


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case; a repeated header keeps every value, joined
    body: bytes
    at: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)  # to compare with events' times
    header_list: list[tuple[str, str]] = field(default_factory=list)


class Receiver:
    """``answer(n)`` gives the status for the n-th request (from 1), 200 by default; ``delay(n)``
    how long it is held before that answer (0 by default)."""

    def __init__(self, url_host: str = "127.0.0.1", scheme: str = "http") -> None:
        # Bound now, not by uvicorn later: another test worker could take a port in between.
        self.listener = bind_free_port()
        self.port = int(self.listener.getsockname()[1])
        self.url = f"{scheme}://{url_host}:{self.port}/hook"
        self.received: list[Received] = []
        self.answer: Callable[[int], int] = lambda n: 200
        self.delay: Callable[[int], float] = lambda n: 0.0
        self._arrived = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers: dict[str, str] = {}
        for name, value in pairs:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.received.append(Received(scope["path"], headers, body, header_list=pairs))
        self._arrived.set()
        number = len(self.received)
        if wait := self.delay(number):
            await asyncio.sleep(wait)  # the receiver is slow: that is the fault under test
        status = self.answer(number)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Until at least ``count`` requests arrived; all of them."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.received


@asynccontextmanager
async def running_receiver(
    tls: tuple[Path, Path] | None = None, url_host: str = "127.0.0.1"
) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1; with ``tls`` (certificate, key) it speaks https, its URL naming
    ``url_host``."""
    receiver = Receiver(url_host, "https" if tls else "http")
    server = uvicorn.Server(
        uvicorn.Config(
            receiver,
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
            log_level="warning",
            lifespan="off",
            # A request a test holds (a slow receiver) does not hold up the receiver's end.
            timeout_graceful_shutdown=1,
        )
    )
    task = await start_serving(server, receiver.listener)
    try:
        yield receiver
    finally:
        await stop_serving(server, task)
        receiver.listener.close()
