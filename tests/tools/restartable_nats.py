"""A real nats-server of the test's own behind ``tests/ackholding_proxy.py`` (it holds a
publish's ack, then drops it with the connection), which a test can kill and start again on the
same port and store: ``restartable``. The connection is ``eventstore.connect``'s, with its
reconnected callback, and the prefix's streams and buckets are made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from tests.ackholding_proxy import AckHoldingProxy

# What the tests allow for a publish to be over after a restart, and for the armed publish to
# reach the proxy: far above what it takes, even on a loaded machine.
SOON = 10.0
# nats-py's own ack wait in these tests: far longer than a restart, so an ack sent again after a
# reconnect is told apart from one that timed out.
ACK_TIMEOUT = 30.0


def progress(job_id: str, current: int) -> events.ProgressReported:
    """A small event to publish (any kind takes the same path)."""
    return events.ProgressReported(job_id=job_id, current=current, total=10)


@dataclass
class Restartable:
    server: EmbeddedNats
    proxy: AckHoldingProxy
    nc: NATS
    js: JetStreamContext
    names: Names

    async def strike(self, subject: str, down: float = 0.0) -> None:
        """Once a publish to ``subject`` (armed before) is stored, its ack held: drop the
        connection with the ack, kill NATS, and start it again after ``down`` seconds."""
        async with asyncio.timeout(SOON):
            await self.proxy.hit.wait()
        assert await self.proxy.stored(), f"NATS did not store the publish to {subject}"
        self.proxy.cut()
        self.server.kill()
        await asyncio.sleep(down)
        self.server = EmbeddedNats(self.server.store_dir, port=self.server.port)
        await asyncio.to_thread(self.server.start)

    async def stored(self, subject: str) -> tuple[int, bytes]:
        """How many messages are stored on ``subject``, and the last one (a connection of its
        own)."""
        nc = await nats.connect(f"nats://127.0.0.1:{self.server.port}")
        try:
            js = nc.jetstream()
            info = await js.stream_info(self.names.stream, subjects_filter=subject)
            count = (info.state.subjects or {}).get(subject, 0)
            last = await js.get_last_msg(self.names.stream, subject)
            return count, last.data or b""
        finally:
            await nc.close()


@asynccontextmanager
async def restartable(tmp_path: Path) -> AsyncIterator[Restartable]:
    server = EmbeddedNats(tmp_path / "nats")
    await asyncio.to_thread(server.start)
    running: Restartable | None = None
    try:
        async with AckHoldingProxy("127.0.0.1", server.port) as proxy:
            settings = Settings(nats_url=proxy.url(), prefix="ackrestart")
            nc = await eventstore.connect(settings, "test")
            try:
                js = nc.jetstream()
                names = Names(settings.prefix)
                await eventstore.ensure_topology(js, names, settings)
                running = Restartable(server, proxy, nc, js, names)
                yield running
            finally:
                proxy.release()
                await eventstore.close(nc)
    finally:
        (running.server if running is not None else server).stop()
