"""The stream reader's connect (``common.streamreader``: the API's update streams, the
projector's feed) with its event loop blocked inside an I/O callback just after it began to
wait for the server's INFO, while the server sends it: shorter or longer than the connect
step's deadline, on asyncio's loop and on uvloop (the API's), the server is kept. Time the loop
spent blocked is not the deadline's (``common.looptime``); before session 37 a block past it
under uvloop left a server that had answered, as if it had not ("no INFO from the server")."""

from __future__ import annotations

import select
import time
from collections.abc import Coroutine
from typing import Any

import nats
import pytest

from jobrunner.common.natsconnection import NatsConnection
from jobrunner.common.streamreader import StreamReader
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze, thaw
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.reader_block import reader_block

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 0.5  # the connect step's deadline


async def _connect_with_the_loop_blocked_waiting_for(
    server: EmbeddedNats, wait: str, blocked: float
) -> None:
    """Connect to ``server``, frozen so that the answer ``wait`` names waits: its INFO (frozen
    from the start), or its PONG (frozen as CONNECT goes out, then PING). That wait begun (the
    first line read, or the second), an I/O callback thaws the server and blocks the loop
    ``blocked`` seconds, then until the answer is in the socket. Raises as the connect does."""
    assert server.proc is not None
    pid = server.proc.pid
    nc = await nats.connect(server.url)  # the reader's JetStream context; unused by its connect
    reader = StreamReader(
        nc.jetstream(),
        [server.url],
        "unused",
        "unused.>",
        connection=NatsConnection(servers=[server.url], connect_timeout=TIMEOUT),
    )
    read_line, send = reader._line, reader._send
    lines_read = 0
    held_line = {"info": 1, "pong": 2}[wait]
    try:
        with reader_block() as block:

            def sent(data: bytes) -> None:
                if wait == "pong" and data.startswith(b"CONNECT "):
                    freeze(pid)  # CONNECT and PING reach the kernel; the PONG waits the thaw
                send(data)

            def line() -> Coroutine[Any, Any, bytes]:
                nonlocal lines_read
                lines_read += 1
                if lines_read == held_line:  # the wait: its deadline is armed as this returns
                    assert reader._writer is not None
                    answer = reader._writer.get_extra_info("socket")

                    def blocked_until_answered() -> None:
                        thaw(pid)
                        time.sleep(blocked)
                        select.select([answer], [], [], 60)  # a bound on a broken test only

                    block.at_next_poll(blocked_until_answered)
                return read_line()

            reader._line = line  # type: ignore[method-assign]
            reader._send = sent  # type: ignore[method-assign]
            if wait == "info":
                freeze(pid)  # the kernel still accepts the connection; INFO waits for the thaw
            await reader._connect()
    finally:
        thaw(pid)
        await reader.close()
        await nc.close()


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("wait", ["info", "pong"])
@pytest.mark.parametrize("blocked", [0.8, 1.25], ids=["shorter", "longer"])
def test_a_server_whose_answer_came_while_the_loop_was_blocked_is_kept(
    own_nats: EmbeddedNats, loop: str, wait: str, blocked: float
) -> None:
    """Blocked 0.8 or 1.25 times the deadline just after the wait for INFO, or for the PONG
    after CONNECT, began, the answer in the socket by the block's end: the connect goes on with
    that server (before the fix, under uvloop, 1.25 times raised "cannot connect to NATS: ...:
    no INFO from the server", or "no answer to CONNECT")."""
    run_on(loop, _connect_with_the_loop_blocked_waiting_for(own_nats, wait, blocked * TIMEOUT))
