"""NATS away for less than the lease TTL (20 s here) but longer than the publish timeout (5 s),
or killed and restarted: the job must go on and complete with every line stored once.

A long TTL is what lets a pause fall between the publish timeout and the TTL. A runner gives its
lease up three quarters of the TTL (15 s) after its last confirmed renewal, and renews every
TTL/6 (3.3 s): any outage under 11.7 s, a restart's own start-up included, is survived wherever
it falls in a renewal interval. (With renewals every TTL/3 and a TTL of 12 s that bound was 5 s,
and the 6.5 s outages lost the lease whenever they began late in an interval.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.faults.cluster import FaultCluster, running_cluster
from tests.faults.scenarios import Expect, lock_scenario

LEASE_TTL = 20.0


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[FaultCluster]:
    async with running_cluster(lease_ttl=LEASE_TTL) as running:
        yield running


async def pause_nats(cluster: FaultCluster, seconds: float) -> None:
    cluster.pause_nats()
    try:
        await asyncio.sleep(seconds)  # the fault itself lasts this long
    finally:
        cluster.resume_nats()


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(4.0, id="4s-below-publish-timeout"),
        pytest.param(6.5, id="6.5s-above-publish-timeout-below-ttl"),
    ],
)
async def test_nats_pause_shorter_than_ttl_completes_the_job(
    cluster: FaultCluster, seconds: float
) -> None:
    """NATS frozen for less than the lease TTL: the job completes with every line stored once."""
    await lock_scenario(
        cluster,
        f"NATS paused {seconds:g} s (TTL {LEASE_TTL:g} s)",
        lambda _a: pause_nats(cluster, seconds),
        Expect(completes=True),
        seconds,
    )


@pytest.mark.parametrize(
    "down",
    [
        pytest.param(0.0, id="restarted-at-once"),
        pytest.param(6.5, id="down-6.5s-above-publish-timeout-below-ttl"),
    ],
)
async def test_nats_killed_and_restarted_completes_the_job(
    cluster: FaultCluster, down: float
) -> None:
    """nats-server killed and restarted: the job completes, every line stored once."""
    await lock_scenario(
        cluster,
        f"NATS SIGKILLed, down {down:g} s, restarted (TTL {LEASE_TTL:g} s)",
        lambda _a: cluster.restart_nats(down),
        Expect(completes=True),
        down + 2.0,
    )
