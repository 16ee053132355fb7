"""NATS unresponsive (SIGSTOP ... SIGCONT) while a job holds a lock, for pauses on both sides of
the lease TTL (3 s) and the runner consumer's ack wait (one TTL, 3 s), and of the publish
timeout (nats-py's 5 s request timeout).

Below the TTL (less the keeper's safety margin, TTL/4, and one renewal interval, TTL/6: the
last confirmed renewal may be that old when the pause starts; 1.75 s with a 3 s TTL) the job goes
on and completes. Above it the runner must stop the tool before
the lease could pass to the job waiting for the lock, keep what it printed, and end the job
LEASE_LOST (or RUNNER_LOST when another runner declared it lost first)."""

from __future__ import annotations

import asyncio

import pytest

from tests.faults.cluster import SHORT_TTL, FaultCluster
from tests.faults.scenarios import Expect, lock_scenario

LEASE_TTL = SHORT_TTL


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


async def pause_nats(cluster: FaultCluster, seconds: float) -> None:
    cluster.pause_nats()
    try:
        await asyncio.sleep(seconds)  # the fault itself lasts this long
    finally:
        cluster.resume_nats()


@pytest.mark.parametrize(
    ("seconds", "completes"),
    [
        pytest.param(1.0, True, id="1s-below-ttl-less-margin-and-renewal"),
        pytest.param(4.0, False, id="4s-above-ttl-and-ack-wait-below-publish-timeout"),
        pytest.param(5.5, False, id="5.5s-above-publish-timeout"),
        pytest.param(7.0, False, id="7s-above-twice-the-ack-wait"),
    ],
)
async def test_nats_pause_keeps_lines_and_one_lock_holder(
    cluster: FaultCluster, seconds: float, completes: bool
) -> None:
    """NATS frozen mid-job: every line stored once, the lock never held twice."""
    await lock_scenario(
        cluster,
        f"NATS paused {seconds:g} s (TTL {LEASE_TTL:g} s)",
        lambda _a: pause_nats(cluster, seconds),
        Expect(completes=completes),
        seconds,
    )
