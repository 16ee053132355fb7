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

from jobrunner.common.metricsexposition import all_families
from jobrunner.embedded.serverprocess import free_port
from tests.tools.event_loops import LOOPS, run_on
from tests.tools.reader_block import reader_block
from tests.tools.stranger_server import stranger_on

pytestmark = pytest.mark.timeout(60)

PEER_TIMEOUT = 0.5  # metrics_peer_timeout_seconds


async def _scrape_with_the_loop_blocked(url: str, blocked: float) -> dict[str, float]:
    """The peer's up gauge and its counter, scraped with the loop blocked ``blocked`` seconds
    at its first poll after the scrape began (its connect under way)."""
    with reader_block() as block:
        block.at_next_poll(lambda: time.sleep(blocked))
        families = await all_families("api", {"runner": url}, PEER_TIMEOUT)
    return {
        f"{s.name}{{{s.labels.get('service')}}}": s.value
        for family in families
        for s in family.samples
        if s.name in ("jobrunner_metrics_peer_up", "peer_things_total")
    }


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("blocked", [0.8, 1.25], ids=["shorter", "longer"])
def test_a_peer_that_answered_while_the_api_loop_was_blocked_is_up(
    loop: str, blocked: float
) -> None:
    """Blocked 0.8 or 1.25 times the peer timeout just after the scrape began: the peer is up
    and its series are in the answer. Both pass because only the time the loop was free to
    take the answer counts; before the fix 1.25 times reported it down on asyncio's loop."""
    registry = CollectorRegistry()
    Counter("peer_things", "Things the peer counted.", registry=registry).inc(3)
    port = free_port()
    with stranger_on(port, status=200, body=generate_latest(registry)):
        seen = run_on(
            loop, _scrape_with_the_loop_blocked(f"http://127.0.0.1:{port}", blocked * PEER_TIMEOUT)
        )
    assert seen == {"jobrunner_metrics_peer_up{runner}": 1.0, "peer_things_total{runner}": 3.0}
