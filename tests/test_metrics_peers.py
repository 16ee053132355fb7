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
from jobrunner.common.metricsexposition import MAX_PEER_BYTES
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
# A valid exposition a third over the most the API reads of a peer (12 MiB).
HUGE_ANSWER = b"# x\n" * (MAX_PEER_BYTES * 3 // 2 // 4)


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
    """A peer answering HTTP/1.1 and keeping the connection open: counts what it was sent.
    ``huge_answer``: the number of the request answered with more than ``MAX_PEER_BYTES``;
    ``hang_at``: (connection, its request) left unanswered until ``release`` is set."""

    def __init__(
        self, huge_answer: int | None = None, hang_at: tuple[int, int] | None = None
    ) -> None:
        registry = CollectorRegistry()
        Counter("peer_things", "Things the peer counted.", registry=registry).inc()
        self.body = generate_latest(registry)
        self.huge_answer, self.hang_at = huge_answer, hang_at
        self.connections = 0
        self.requests = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.ended = asyncio.Event()  # a connection's end (its EOF) seen
        self.release = asyncio.Event()

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection, served = self.connections, 0
        self.writers.append(writer)
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                served += 1
                if (connection, served) == self.hang_at:
                    await self.release.wait()
                body = HUGE_ANSWER if self.requests == self.huge_answer else self.body
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.ended.set()


@asynccontextmanager
async def serving(peer: KeepAlivePeer, port: int = 0) -> AsyncIterator[str]:
    """``peer`` listening on ``port`` (0: any free one); its URL. At the end its hanging
    answer is let go and its server closed."""
    server = await asyncio.start_server(peer.answer, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        peer.release.set()
        server.close()


async def test_the_api_reads_a_peer_over_one_kept_connection(settings: Settings) -> None:
    """Three /metrics answers read a peer that keeps its connections open over one connection
    (before: a new HTTP client, so a new connection, for each answer)."""
    peer = KeepAlivePeer()
    async with serving(peer) as url, api_reading(settings, url) as system:
        for _ in range(3):
            assert (await peer_up(system))[0] == 1
    assert (peer.requests, peer.connections) == (3, 1)


async def test_the_api_stop_closes_its_connection_to_a_peer(settings: Settings) -> None:
    """The connection a peer keeps open ends (the peer reads its EOF) when the API stops, not
    when the process exits some time later."""
    peer = KeepAlivePeer()
    async with serving(peer) as url:
        async with api_reading(settings, url) as system:
            assert (await peer_up(system))[0] == 1
            assert not peer.ended.is_set()
        await asyncio.wait_for(peer.ended.wait(), 10)


async def test_a_peer_hanging_on_a_kept_connection_is_left_out_then_read_again(
    settings: Settings,
) -> None:
    """A peer that answered once over a kept connection leaves the second request on it
    unanswered: that answer leaves it out within its bound, and the next ones read it again
    (over a new connection: the hanging one is not reused)."""
    peer = KeepAlivePeer(hang_at=(1, 2))
    async with serving(peer) as url, api_reading(settings, url) as system:
        answers = [await peer_up(system) for _ in range(4)]
    assert [up for up, _ in answers] == [1, 0, 1, 1]
    assert answers[1][1] < PEER_TIMEOUT * MOST_BOUNDS + LATE, answers[1][1]


async def test_a_peer_answering_too_much_is_left_out_then_read_again(settings: Settings) -> None:
    """A peer whose second answer is 12 MiB (over the 8 MiB the API reads of one) is left out
    of that answer and read again by the next."""
    peer = KeepAlivePeer(huge_answer=2)
    async with serving(peer) as url, api_reading(settings, url) as system:
        ups = [(await peer_up(system))[0] for _ in range(3)]
    assert ups == [1, 0, 1]


async def test_a_peer_restarted_on_its_port_is_read_again(settings: Settings) -> None:
    """A peer that kept its connection open dies (its connections reset) and is started again
    on its port: the next answers read it (the dead connection is not reused)."""
    first, second = KeepAlivePeer(), KeepAlivePeer()
    server = await asyncio.start_server(first.answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with api_reading(settings, f"http://127.0.0.1:{port}") as system:
            assert (await peer_up(system))[0] == 1
            server.close()
            for writer in first.writers:  # the peer process died: its connections reset
                writer.transport.abort()
            await server.wait_closed()
            async with serving(second, port):
                ups = [(await peer_up(system))[0] for _ in range(2)]
    finally:
        server.close()
    assert ups == [1, 1]
    assert second.requests == 2


async def test_eight_answers_at_once_leave_a_stalled_peer_out_within_the_bound(
    settings: Settings,
) -> None:
    """Eight /metrics answers at once while the peer is stalled (SIGSTOP), through the one
    shared client: each leaves it out within its bound (none waits for another's connection),
    and once it resumes the next answer reads it."""
    async with (
        metrics_peer(free_port()) as peer,
        api_reading(settings, peer.url) as system,
    ):
        assert (await peer_up(system))[0] == 1
        peer.stall()
        try:
            answers = await asyncio.gather(*(peer_up(system) for _ in range(8)))
        finally:
            peer.resume()
        assert [up for up, _ in answers] == [0] * 8
        assert max(took for _, took in answers) < PEER_TIMEOUT * MOST_BOUNDS + LATE, answers
        assert (await peer_up(system))[0] == 1


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
