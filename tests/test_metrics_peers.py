"""The API's ``/metrics`` reads its peers with one HTTP client for its whole life (closed at its
stop): connections to a peer are reused, and a peer stalled or killed meanwhile is still left
out within ``metrics_peer_timeout_seconds`` and read again once it is back. Against a real API
and peers that are real processes (a service's own metrics listener), stalled by SIGSTOP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from jobrunner.common.looptime import MOST_BOUNDS
from jobrunner.common.settings import Settings
from jobrunner.embedded.serverprocess import free_port
from tests.metrics_support import scrape, value
from tests.system import System
from tests.tools.metrics_peer import metrics_peer

pytestmark = pytest.mark.timeout(90)

PEER_TIMEOUT = 0.5  # metrics_peer_timeout_seconds
# A bound on the machine's own slowness, not a timing of the code: a stalled peer's answer
# comes after at most MOST_BOUNDS timeouts of wall time.
LATE = 1.0


@asynccontextmanager
async def api_reading(settings: Settings, peer_url: str) -> AsyncIterator[System]:
    """An API whose /metrics reads the peer ``runner`` at ``peer_url``."""
    system = System(
        msgspec.structs.replace(
            settings,
            auth=True,
            metrics_peers=f"runner={peer_url}",
            metrics_peer_timeout_seconds=PEER_TIMEOUT,
        )
    )
    await system.start_api()
    try:
        yield system
    finally:
        await system.stop()


async def peer_up(system: System) -> tuple[float, float]:
    """``jobrunner_metrics_peer_up`` of one /metrics answer, and how long that answer took."""
    async with system.client() as client:
        started = time.monotonic()
        samples = await scrape(client)
        took = time.monotonic() - started
    return value(samples, "jobrunner_metrics_peer_up", service="runner"), took


class KeepAlivePeer:
    """A peer answering HTTP/1.1 and keeping the connection open: counts what it was sent."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        Counter("peer_things", "Things the peer counted.", registry=registry).inc()
        self.body = generate_latest(registry)
        self.connections = 0
        self.requests = 0

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(self.body)}\r\n\r\n".encode()
                    + self.body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_the_api_reads_a_peer_over_one_kept_connection(settings: Settings) -> None:
    """Three /metrics answers read a peer that keeps its connections open over one connection
    (before: a new HTTP client, so a new connection, for each answer)."""
    peer = KeepAlivePeer()
    server = await asyncio.start_server(peer.answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with api_reading(settings, f"http://127.0.0.1:{port}") as system:
            for _ in range(3):
                assert (await peer_up(system))[0] == 1
    finally:
        server.close()
    assert (peer.requests, peer.connections) == (3, 1)


@pytest.mark.parametrize("stall", [0.6, 1.5], ids=["shorter", "longer"])
async def test_a_peer_stalled_about_the_timeout_is_read_or_left_out_and_read_again(
    settings: Settings, stall: float
) -> None:
    """A peer stalled (SIGSTOP) for 0.6 or 1.5 times the peer timeout while the API reads it,
    after earlier answers through the same client: read when it resumes within the timeout,
    else left out (peer_up 0) within its bound; read again by the next answer either way."""
    async with (
        metrics_peer(free_port()) as peer,
        api_reading(settings, peer.url) as system,
    ):
        assert (await peer_up(system))[0] == 1
        peer.stall()
        asyncio.get_running_loop().call_later(stall * PEER_TIMEOUT, peer.resume)
        up, took = await peer_up(system)
        assert up == (1 if stall < 1 else 0)
        assert took < PEER_TIMEOUT * MOST_BOUNDS + LATE, took
        await asyncio.sleep(stall * PEER_TIMEOUT)  # resumed by now: the condition of the next
        assert (await peer_up(system))[0] == 1


async def test_a_killed_peer_is_left_out_and_read_again_once_it_is_back(
    settings: Settings,
) -> None:
    """A peer killed after the API read it is left out (peer_up 0) within its bound; started
    again on its port, the next answer reads it through the same client."""
    port = free_port()
    async with metrics_peer(port) as peer, api_reading(settings, peer.url) as system:
        assert (await peer_up(system))[0] == 1
        await peer.kill()
        up, took = await peer_up(system)
        assert (up, took < PEER_TIMEOUT * MOST_BOUNDS + LATE) == (0, True), took
        async with metrics_peer(port):
            assert (await peer_up(system))[0] == 1
