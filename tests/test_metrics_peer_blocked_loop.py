"""The API's scrape of its peers' metrics (``common.metricsexposition``) with its event loop
blocked inside an I/O callback just after the scrape began, while the peer (an HTTP server in
a thread of its own, so it answers whatever the loop does) is ready to answer: shorter or
longer than ``metrics_peer_timeout_seconds``, on asyncio's loop and on uvloop, the peer is up
and its series are in the answer. Time the loop spent blocked is not the bound's
(``common.looptime``); before session 39 a block past it left the peer out on asyncio's loop
(``jobrunner_metrics_peer_up`` 0) though it had answered (under uvloop this block happened
to pass: its timer ran after the answer)."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import Metric

from jobrunner.common.looptime import MOST_BOUNDS
from jobrunner.common.metricsexposition import PeerMetrics
from jobrunner.embedded.serverprocess import free_port
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.held_loop import loop_held_again_and_again
from tests.tools.reader_block import ReaderBlock, reader_block
from tests.tools.stranger_server import stranger_on

pytestmark = pytest.mark.timeout(60)

PEER_TIMEOUT = 0.5  # metrics_peer_timeout_seconds


def _peer_series(families: list[Metric]) -> dict[str, float]:
    return {
        f"{s.name}{{{s.labels.get('service')}}}": s.value
        for family in families
        for s in family.samples
        if s.name in ("jobrunner_metrics_peer_up", "peer_things_total")
    }


def _peer_metrics() -> bytes:
    registry = CollectorRegistry()
    Counter("peer_things", "Things the peer counted.", registry=registry).inc(3)
    return generate_latest(registry)


async def _scrape_with_the_loop_blocked(
    port: int, blocked: float, when: str, block: ReaderBlock
) -> dict[str, float]:
    """The peer's up gauge and its counter, scraped with the loop blocked ``blocked`` seconds:
    at its first poll after the scrape began (``connect``: its connect under way), or from the
    moment the peer has the request (``read``: the scrape waiting for the answer, which the
    peer sends as the block begins)."""
    async with PeerMetrics(PEER_TIMEOUT) as peers:
        if when == "connect":
            block.at_next_poll(lambda: time.sleep(blocked))
        families = await peers.all_families("api", {"runner": f"http://127.0.0.1:{port}"})
    return _peer_series(families)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("when", ["connect", "read"])
@pytest.mark.parametrize("blocked", [0.8, 1.25], ids=["shorter", "longer"])
def test_a_peer_that_answered_while_the_api_loop_was_blocked_is_up(
    loop: str, when: str, blocked: float
) -> None:
    """Blocked 0.8 or 1.25 times the peer timeout just after the scrape began, or once the peer
    has the request: the peer is up and its series are in the answer. Both pass because only
    the time the loop was free to take the answer counts; before the fix 1.25 times reported
    it down on asyncio's loop."""
    port = free_port()
    blocks: list[ReaderBlock] = []

    def block_the_loop() -> None:  # in the peer's thread, the request in
        if when == "read":
            blocks[0].at_next_poll(lambda: time.sleep(blocked * PEER_TIMEOUT))

    async def scrape() -> dict[str, float]:
        with reader_block() as block:
            blocks.append(block)
            return await _scrape_with_the_loop_blocked(port, blocked * PEER_TIMEOUT, when, block)

    with stranger_on(port, status=200, body=_peer_metrics(), before_answer=block_the_loop):
        seen = run_on(loop, scrape())
    assert seen == {"jobrunner_metrics_peer_up{runner}": 1.0, "peer_things_total{runner}": 3.0}


HOLD = 0.3  # each hold of the loop by its other work, again and again
FREE = 0.05  # the loop's free time between two holds
TRICKLE = 0.1  # a byte of the peer's answer every this long: under httpx's read timeout
# A bound on the machine's own slowness, not a timing of the code: without the backstop the
# scrape takes about 20 slices of (FREE + HOLD), 7 s.
LATE = 0.5


async def _scrape_of_a_trickling_peer_with_the_loop_held_again_and_again(
    port: int,
) -> tuple[float, dict[str, float]]:
    async with PeerMetrics(PEER_TIMEOUT) as peers:
        with loop_held_again_and_again(HOLD, FREE):
            started = time.monotonic()
            families = await peers.all_families("api", {"runner": f"http://127.0.0.1:{port}"})
            return time.monotonic() - started, _peer_series(families)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_trickling_peer_is_left_out_within_twice_the_timeout_however_busy_the_loop(
    loop: str,
) -> None:
    """A peer that sends its answer a byte at a time, never done, while the API's loop is held
    by its other work again and again (every slice of the loop's own time then late, none
    counted): it is left out after at most twice the peer timeout of wall time (plus the hold
    under way), so ``GET /metrics`` answers in time."""
    port = free_port()
    with stranger_on(port, status=200, body=_peer_metrics(), trickle=TRICKLE):
        took, seen = run_on(
            loop, _scrape_of_a_trickling_peer_with_the_loop_held_again_and_again(port)
        )
    assert seen == {"jobrunner_metrics_peer_up{runner}": 0.0}
    assert took < MOST_BOUNDS * PEER_TIMEOUT + HOLD + LATE
