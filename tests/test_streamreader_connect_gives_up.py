"""The stream reader's connect given up on a server that never answers a step (the TCP
connect, its INFO, the TLS hello), on asyncio's loop and on uvloop: a ``StreamReaderError``
naming the step once its deadline has passed (never a hang), every socket of the attempt
closed (counted in ``/proc/self/fd``), and no "Task exception was never retrieved". A port that
refuses fails at once, without waiting for the deadline. (The faults just shorter than the
deadline, and longer ones with a server after them, are in ``test_streamreader_connect.py``;
a loop blocked meanwhile in ``test_streamreader_connect_blocked_loop.py``.)"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import math
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import nats
import pytest

from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.streamreader import StreamReader, StreamReaderError
from tests.stalling_proxy import StallingProxy, refusing_address, silent_server
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.open_fds import open_fds
from tests.tools.scripted_nats import ScriptedNats
from tests.tools.waiting import until

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/fd"),
]

TIMEOUT = 0.5  # each connect step's deadline
HANG = 15.0  # a bound on a hang, not a timing: the connect gives up within 2 deadlines
# The loops' timers may fire a little early against time.monotonic (uvloop rounds them to whole
# milliseconds): the give-up is "the deadline has passed" within this.
EARLY = 0.05


@asynccontextmanager
async def _unanswered_tcp() -> AsyncIterator[str]:
    """A server whose accept queue is full for good: the kernel answers no SYN."""
    async with StallingProxy("127.0.0.1", 1, accept_after=math.inf) as busy:
        yield busy.url()


@asynccontextmanager
async def _no_tls_reply() -> AsyncIterator[str]:
    """A plain TCP listener that says in its INFO that TLS is required, then never answers the
    TLS hello (nor anything else)."""
    info = {"max_payload": 1 << 20, "tls_required": True}
    async with ScriptedNats(b"", info=info) as server:
        yield server.url


@asynccontextmanager
async def _silent() -> AsyncIterator[str]:
    async with silent_server() as url:
        yield url


@asynccontextmanager
async def _refusing() -> AsyncIterator[str]:
    with refusing_address() as url:
        yield url


async def _open_fails(
    nats_url: str, server: Callable[[], AbstractAsyncContextManager[str]], timeout: float
) -> tuple[str, float]:
    """The error of a reader's ``open`` on ``server`` alone and the seconds it took; checks
    that the sockets it opened are all closed after it."""
    nc = await nats.connect(nats_url)  # the reader's JetStream context; unused by its connect
    unretrieved: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        async with server() as url:
            before = open_fds()
            connection = NatsConnection(servers=[url], connect_timeout=timeout)
            reader = StreamReader(
                nc.jetstream(), [url], "unused", "unused.>", connection=connection
            )
            started = time.monotonic()
            with pytest.raises(StreamReaderError) as raised:
                async with asyncio.timeout(HANG):
                    await reader.open(1)
            took = time.monotonic() - started
            await until(lambda: open_fds() == before, "every socket of the attempt closed")
        gc.collect()  # a task that ended with an error nobody read is reported when collected
        await asyncio.sleep(0)
        assert unretrieved == []
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return str(raised.value), took


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    ("server", "step"),
    [
        (_unanswered_tcp, "no TCP connection"),
        (_silent, "no INFO from the server"),
        (_no_tls_reply, "no TLS handshake"),
    ],
    ids=["tcp", "info", "tls"],
)
def test_a_server_that_never_answers_a_connect_step_is_given_up_naming_the_step(
    nats_server_url: str,
    loop: str,
    server: Callable[[], AbstractAsyncContextManager[str]],
    step: str,
) -> None:
    """A server that never answers the TCP connect, never sends its INFO, or never answers the
    TLS hello: once the deadline has passed the reader fails with "cannot connect to NATS"
    naming the step, never hangs, and leaves no socket open."""
    message, took = run_on(loop, _open_fails(nats_server_url, server, TIMEOUT))
    assert "cannot connect to NATS" in message
    assert f"{step} within {TIMEOUT:g} s" in message
    assert TIMEOUT - EARLY <= took < HANG


REFUSED_TIMEOUT = 5.0  # a deadline the refusal must not wait for


@pytest.mark.parametrize("loop", LOOPS)
def test_a_port_that_refuses_fails_at_once(nats_server_url: str, loop: str) -> None:
    """A server whose port refuses the connection fails the reader at once, with the reason,
    not after the connect deadline."""
    message, took = run_on(loop, _open_fails(nats_server_url, _refusing, REFUSED_TIMEOUT))
    assert "cannot connect to NATS" in message
    assert f"[Errno {errno.ECONNREFUSED}]" in message  # as each loop words it
    assert took < REFUSED_TIMEOUT
