"""A TCP server of a test's own on a free loopback port: what the scripted servers and the
faulty proxies in front of nats-server share. Each serves its connections its own way
(``_serve``) and ends them its own way (``_end_connections``)."""

from __future__ import annotations

import asyncio
from typing import Self


class LoopbackServer:
    """Listening on ``port`` once entered, each connection handed to ``_serve``; once left, it
    accepts no more and ends the connections it serves."""

    port = 0
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        await self._end_connections()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _end_connections(self) -> None:
        raise NotImplementedError
