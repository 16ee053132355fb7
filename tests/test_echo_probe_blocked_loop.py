"""The echo probe (``common.echoprobe``: the API's NATS watch, the runner's bulk connection)
with its event loop blocked inside an I/O callback just after its message went out, while NATS
sends it back, on asyncio's loop and on uvloop: shorter and longer than the bound, the echo
comes back (time the loop spent blocked is not the bound's); and with NATS frozen (SIGSTOP),
shorter than the bound it comes back, for good it is said not back before the bound is half
over again.

Before session 37's fix a block past the bound was said not back though the echo waited in
the socket: the bound's one timeout ran before the echo's chain in nats-py (poll, read loop,
subscription task) had, on both loops."""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest

from jobrunner.common.echoprobe import EchoProbe
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze, thaw
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.nats_silence import thaw_after
from tests.tools.reader_block import reader_block

pytestmark = pytest.mark.timeout(120)

BOUND = 0.5
ROUNDS = 3


@asynccontextmanager
async def _probe_on(server: EmbeddedNats) -> AsyncIterator[tuple[Any, EchoProbe]]:
    """A connection to ``server`` and its echo probe; at the end the server is thawed (whatever
    the test froze) and both are closed."""
    nc = await nats.connect(server.url)
    echo = EchoProbe(nc, "_test.echo")
    await echo.open()
    try:
        yield nc, echo
    finally:
        assert server.proc is not None
        thaw(server.proc.pid)
        await echo.close()
        await nc.close()


async def _echoes_with_the_loop_blocked_after_each_send(
    server: EmbeddedNats, blocked: float
) -> list[bool]:
    """``ROUNDS`` probes, each publish followed, at the loop's next poll, by an I/O callback
    that blocks the loop for ``blocked`` seconds and then until the echo waits in the socket;
    the echo held (the server frozen) until that callback runs. Whether each came back."""
    assert server.proc is not None
    pid = server.proc.pid
    came_back = []
    async with _probe_on(server) as (nc, echo):
        # nats-py's TCP transport, whose writes the test holds (typed as its base, which has no
        # writer of its own).
        transport: Any = nc._transport
        answers = transport._io_writer.get_extra_info("socket")
        send = transport.writelines
        with reader_block() as reader:

            def block_until_answered() -> None:
                thaw(pid)
                time.sleep(blocked)
                select.select([answers], [], [], 60)  # a bound on a broken test only

            def held_for_the_block(payload: list[bytes]) -> None:
                freeze(pid)
                reader.at_next_poll(block_until_answered)
                send(payload)

            for _ in range(ROUNDS):
                transport.writelines = held_for_the_block
                try:
                    came_back.append(await echo.came_back(BOUND))
                finally:
                    transport.writelines = send
    return came_back


@pytest.mark.parametrize("loop", LOOPS)
def test_an_echo_whose_loop_blocked_shorter_than_the_bound_after_its_send_comes_back(
    own_nats: EmbeddedNats, loop: str
) -> None:
    """Blocked 0.8 times the bound inside an I/O callback after the send: every echo comes
    back."""
    came_back = run_on(loop, _echoes_with_the_loop_blocked_after_each_send(own_nats, 0.4))
    assert came_back == [True] * ROUNDS


@pytest.mark.parametrize("loop", LOOPS)
def test_an_echo_whose_loop_blocked_longer_than_the_bound_after_its_send_comes_back(
    own_nats: EmbeddedNats, loop: str
) -> None:
    """Blocked 1.25 times the bound inside an I/O callback after the send, the echo in the
    socket by the block's end: it counts as back (NATS answered); before the fix it was said
    not back, every round, on both loops (a live NATS told silent to the API's viewers)."""
    came_back = run_on(loop, _echoes_with_the_loop_blocked_after_each_send(own_nats, 0.625))
    assert came_back == [True] * ROUNDS


async def _echo_with_nats_frozen_for(server: EmbeddedNats, frozen: float) -> bool:
    """One probe sent as the server freezes (every thread stopped) for ``frozen`` seconds:
    whether it came back."""
    async with _probe_on(server) as (_, echo):
        thawing = thaw_after(server, frozen)
        try:
            return await echo.came_back(BOUND)
        finally:
            thawing.cancel()


@pytest.mark.parametrize("loop", LOOPS)
def test_an_echo_sent_to_a_nats_frozen_shorter_than_the_bound_comes_back(
    own_nats: EmbeddedNats, loop: str
) -> None:
    """NATS frozen 0.8 times the bound as the echo goes out: it comes back once NATS runs."""
    assert run_on(loop, _echo_with_nats_frozen_for(own_nats, 0.8 * BOUND))


@pytest.mark.parametrize("loop", LOOPS)
def test_an_echo_sent_to_a_frozen_nats_is_said_not_back_within_the_bound_and_a_little(
    own_nats: EmbeddedNats, loop: str
) -> None:
    """NATS frozen until 1.5 times the bound: the echo is said not back, before the thaw would
    have let it come back (the slices that exclude a blocked loop's time do not stretch the
    bound of a loop that is free)."""
    assert not run_on(loop, _echo_with_nats_frozen_for(own_nats, 1.5 * BOUND))


async def _echo_to_a_frozen_nats_with_the_loop_blocked_after_its_send(
    server: EmbeddedNats, blocked: float, frozen: float
) -> bool:
    """One probe whose publish freezes NATS for ``frozen`` seconds and is followed, at the
    loop's next poll, by an I/O callback that blocks the loop ``blocked`` seconds: whether the
    echo came back."""
    thawing: list[asyncio.TimerHandle] = []
    async with _probe_on(server) as (nc, echo):
        transport: Any = nc._transport  # nats-py's TCP transport, its writes held by the test
        send = transport.writelines
        with reader_block() as reader:

            def frozen_and_blocked(payload: list[bytes]) -> None:
                thawing.append(thaw_after(server, frozen))
                reader.at_next_poll(lambda: time.sleep(blocked))
                send(payload)

            transport.writelines = frozen_and_blocked
            try:
                return await echo.came_back(BOUND)
            finally:
                transport.writelines = send
                for handle in thawing:
                    handle.cancel()


@pytest.mark.parametrize("loop", LOOPS)
def test_an_echo_to_a_frozen_nats_is_said_not_back_though_the_loop_blocked_past_the_bound(
    own_nats: EmbeddedNats, loop: str
) -> None:
    """NATS frozen until 3 times the bound, the loop blocked 1.25 times the bound just after
    the send: the echo is said not back, before the thaw (the blocked time is not counted, but
    the free slices after it are)."""
    assert not run_on(
        loop,
        _echo_to_a_frozen_nats_with_the_loop_blocked_after_its_send(
            own_nats, blocked=1.25 * BOUND, frozen=3 * BOUND
        ),
    )
