"""The stream reader's connect cancelled by its caller just as a step completes (the TCP
connection made, the TLS handshake done), on asyncio's loop and on uvloop: the caller gets its
``CancelledError`` and the connection is closed, not left open (counted in ``/proc/self/fd``).
The step's answer is already in when the cancel comes, so the wait for it cannot cancel the
step: the connection made must be closed on its own. Before session 39's fix round, a
connection made as its caller was cancelled stayed open."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import Callable, Iterator
from typing import Any

import nats
import pytest

from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.streamreader import StreamReader
from tests.stalling_proxy import silent_server
from tests.tls_nats import TlsFiles, TlsNats, tls_nats
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.open_fds import open_fds
from tests.tools.waiting import until

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/fd"),
]

TIMEOUT = 5.0  # each connect step's deadline: not reached, the cancel comes first
# Closed at the loop's next turns; well before nats-server closes a connection that has sent
# no CONNECT (its auth timeout, seconds), which would hide a connection left open.
CLOSED_WITHIN = 1.0


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[TlsNats, TlsFiles]]:
    """A nats-server that requires TLS (client certificates not asked for)."""
    with tls_nats(verify_clients=False) as started:
        yield started


# What the wrapped steps returned, kept for the test's length: a connection dropped unclosed is
# closed by the collector in time (with a ResourceWarning), which would hide the leak.
KEPT: list[object] = []


def _cancelling_the_caller_once_done(
    step: Callable[..., Any], caller: Callable[[], asyncio.Task[None]]
) -> Callable[..., Any]:
    """``step`` (asyncio's own), which cancels ``caller()`` once it has completed, before the
    caller's wait for it has its answer."""

    async def done_then_caller_cancelled(*args: Any, **kwargs: Any) -> Any:
        result = await step(*args, **kwargs)
        KEPT.append((args, result))
        caller().cancel()
        return result

    return done_then_caller_cancelled


async def _cancelled_as_the_step_completes(
    nats_url: str, url: str, patch: Callable[[Callable[[], asyncio.Task[None]]], None], ca: Any
) -> None:
    """Open a reader on ``url`` alone, its caller cancelled as the step ``patch`` wraps
    completes; checks the caller is cancelled and every socket of the attempt closed."""
    tls = ssl.create_default_context(cafile=ca) if ca else None
    nc = await nats.connect(nats_url)  # the reader's JetStream context; unused by its connect
    try:
        connection = NatsConnection(servers=[url], connect_timeout=TIMEOUT, tls=tls)
        reader = StreamReader(nc.jetstream(), [url], "unused", "unused.>", connection=connection)
        before = open_fds()
        caller: asyncio.Task[None] | None = None
        patch(lambda: caller)  # type: ignore[arg-type,return-value]
        caller = asyncio.create_task(reader.open(1))
        with pytest.raises(asyncio.CancelledError):
            await caller
        await until(lambda: open_fds() == before, "the connection closed", seconds=CLOSED_WITHIN)
    finally:
        KEPT.clear()
        await nc.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connect_cancelled_as_the_tcp_connection_is_made_closes_it(
    nats_server_url: str, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller cancelled just as the TCP connection is made: the connection is closed."""

    def patch(caller: Callable[[], asyncio.Task[None]]) -> None:
        wrapped = _cancelling_the_caller_once_done(asyncio.open_connection, caller)
        monkeypatch.setattr(asyncio, "open_connection", wrapped)

    async def scenario() -> None:
        async with silent_server() as url:
            await _cancelled_as_the_step_completes(nats_server_url, url, patch, None)

    run_on(loop, scenario())


@pytest.mark.parametrize("loop", LOOPS)
def test_a_connect_cancelled_as_the_tls_handshake_is_done_closes_the_connection(
    nats_server_url: str,
    tls_server: tuple[TlsNats, TlsFiles],
    loop: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The caller cancelled just as the TLS handshake is done: the connection is closed."""
    server, files = tls_server

    def patch(caller: Callable[[], asyncio.Task[None]]) -> None:
        wrapped = _cancelling_the_caller_once_done(asyncio.StreamWriter.start_tls, caller)
        monkeypatch.setattr(asyncio.StreamWriter, "start_tls", wrapped)

    url = f"tls://127.0.0.1:{server.port}"
    run_on(loop, _cancelled_as_the_step_completes(nats_server_url, url, patch, files.ca))
