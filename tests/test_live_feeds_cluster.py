"""The API's live feeds on a 3-node cluster (``api.livefeeds``): the pool's connections start on
different nodes, and a node frozen (SIGSTOP) holds up neither a new feed's start nor, past the
silence limit, the feeds that were on it: they go on after their last message on the other
nodes, every message once and in order."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import psutil
import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.api.livefeeds import LiveFeed, LiveFeeds
from tests.cluster import NODE_NAMES, ClusterNode

pytestmark = pytest.mark.timeout(240)

HEARTBEAT = 1.0


@pytest.fixture
async def nodes() -> AsyncIterator[list[ClusterNode]]:
    with scratch_dir("jobrunner-test-livefeeds-cluster-") as root:
        routes = [free_port() for _ in NODE_NAMES]
        started = [
            ClusterNode(name, root, routes, route)
            for name, route in zip(NODE_NAMES, routes, strict=True)
        ]
        try:
            await asyncio.gather(*(asyncio.to_thread(node.start) for node in started))
            yield started
        finally:
            for node in started:
                node.resume()
                node.stop()


async def meta_leader(nodes: list[ClusterNode]) -> str:
    """The JetStream meta leader's name, as the first node that knows one says."""
    async with httpx.AsyncClient(timeout=2) as http:
        for node in nodes:
            jsz = (await http.get(f"http://127.0.0.1:{node.monitor_port}/jsz")).json()
            leader = jsz.get("meta_cluster", {}).get("leader")
            if leader:
                return str(leader)
    raise AssertionError("no meta leader")


def line(job: str, n: int) -> events.LineLogged:
    now = datetime.now(UTC)
    return events.LineLogged(job_id=job, lines=[events.LogLine(n, "stdout", "INFO", now, "x")])


async def taken_until(feed: LiveFeed, last_seq: int) -> list[int]:
    seqs: list[int] = []
    async with asyncio.timeout(120):
        while not seqs or seqs[-1] < last_seq:
            seqs += [seq for seq, _ in await feed.next_batch(1.0)]
    return seqs


async def test_feeds_spread_over_the_nodes_and_leave_a_frozen_one(
    nodes: list[ClusterNode],
) -> None:
    """Three connections over three nodes: one on each, the feeds a third on each. A node that
    leads nothing frozen: a new feed starts and reads; the feeds that were on its connection go on
    on the other nodes after their last message once it has been silent for the limit."""
    names = Names(f"t{uuid.uuid4().hex[:10]}")
    settings = Settings(
        nats_url=",".join(node.url for node in nodes), prefix=names.prefix, stream_replicas=3
    )
    nc = await eventstore.connect(settings, "test")
    js: JetStreamContext = nc.jetstream()
    live = LiveFeeds(js, names.stream, [node.url for node in nodes], size=3, heartbeat=HEARTBEAT)
    try:
        async with asyncio.timeout(60):
            while True:
                try:
                    await eventstore.ensure_topology(js, names, settings)
                    break
                except Exception:
                    await asyncio.sleep(1)
        jobs = [f"job{n}" for n in range(30)]
        feeds = [live.feed(names.job_subjects(job)) for job in jobs]
        for feed in feeds:
            await feed.start(1)
        ports = Counter(
            c.raddr.port
            for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.status == "ESTABLISHED"
        )
        # The test's own connection is on one of them.
        assert sorted(ports[node.port] for node in nodes) in ([1, 1, 2], [1, 2, 1], [2, 1, 1])
        assert sorted(len(link.feeds) for link in live.links) == [10, 10, 10]
        first = [await eventstore.publish(js, names, line(job, 1)) for job in jobs]
        for feed, seq in zip(feeds, first, strict=True):
            assert await taken_until(feed, seq) == [seq]

        info = await js.stream_info(names.stream)
        leaders = {await meta_leader(nodes), info.cluster.leader if info.cluster else None}
        ours = nc.connected_url.port if nc.connected_url else None
        victim = next(n for n in nodes if n.name not in leaders and n.port != ours)
        link = next(link for link in live.links if link.server.endswith(f":{victim.port}"))
        where = link.server
        moved = [feed for feed in feeds if feed.link is link]
        victim.pause()
        try:
            late = live.feed(names.job_subjects("late"))
            await late.start(1)
            seq = await eventstore.publish(js, names, line("late", 1))
            assert await taken_until(late, seq) == [seq]
            second = [await eventstore.publish(js, names, line(job, 2)) for job in jobs]
            for feed, seq in zip(feeds, second, strict=True):
                assert await taken_until(feed, seq) == [seq]
            assert moved
            assert not any(feed.link is not None and feed.link.server == where for feed in moved)
        finally:
            victim.resume()
    finally:
        await live.close()
        await eventstore.close(nc)
