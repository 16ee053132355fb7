"""The API's live feeds, many jobs on a few raw connections (``api.livefeeds``), on a nats-server
of their own: every message once and in order, across a lost connection, a consumer gone and a
server frozen shorter and longer than the silence that counts as lost; the sockets capped
however many jobs are watched; a feed whose messages are not taken holds little and holds up no
other feed on its connection."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import psutil
import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.services.api.livefeeds import DEAD_AFTER, FEED_BYTES, PULL_BYTES, LiveFeed, LiveFeeds

pytestmark = pytest.mark.timeout(120)

HEARTBEAT = 2.0  # the tests' (5 s by default): a lost connection counts after 6 s of silence


@pytest.fixture(scope="module")
def own_nats() -> Iterator[EmbeddedNats]:
    with scratch_dir("jobrunner-test-livefeeds-") as root:
        server = EmbeddedNats(root / "store")
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def names() -> Names:
    return Names(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def js(own_nats: EmbeddedNats, names: Names) -> AsyncIterator[JetStreamContext]:
    settings = Settings(nats_url=own_nats.url, prefix=names.prefix)
    nc = await eventstore.connect(settings, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    yield js
    await js.delete_stream(names.stream)
    await eventstore.close(nc)


def line(job: str, n: int, text: str = "") -> events.LineLogged:
    now = datetime.now(UTC)
    return events.LineLogged(
        job_id=job, lines=[events.LogLine(n, "stdout", "INFO", now, text or f"line {n}")]
    )


async def publish(
    js: JetStreamContext, names: Names, job: str, first: int, count: int
) -> list[int]:
    return [await eventstore.publish(js, names, line(job, n)) for n in range(first, first + count)]


async def taken_until(feed: LiveFeed, last_seq: int, timeout: float = 60) -> list[int]:
    seqs: list[int] = []
    async with asyncio.timeout(timeout):
        while not seqs or seqs[-1] < last_seq:
            seqs += [seq for seq, _ in await feed.next_batch(1.0)]
    return seqs


def sockets_to(port: int) -> int:
    return sum(
        1
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED"
    )


async def test_two_hundred_jobs_share_the_pools_few_connections(
    own_nats: EmbeddedNats, js: JetStreamContext, names: Names
) -> None:
    """200 watched jobs: 4 sockets for their feeds (beside the test's own), each job its line."""
    live = LiveFeeds(js, names.stream, [own_nats.url], size=4)
    feeds = [live.feed(names.job_subjects(f"job{n}")) for n in range(200)]
    try:
        await asyncio.gather(*(feed.start(1) for feed in feeds))
        assert live.connected == 4
        assert sockets_to(own_nats.port) == 1 + 4
        seqs = [(await publish(js, names, f"job{n}", 1, 1))[0] for n in range(200)]
        for feed, seq in zip(feeds, seqs, strict=True):
            assert await taken_until(feed, seq) == [seq]
        assert {len(link.feeds) for link in live.links} == {50}
    finally:
        await live.close()
    assert sockets_to(own_nats.port) == 1


async def test_a_lost_connection_loses_and_repeats_nothing(
    own_nats: EmbeddedNats, js: JetStreamContext, names: Names
) -> None:
    """The feeds' socket dropped mid-stream: each feed reads on after the last message it had,
    every message once, in order, and says when it has caught up (pending 0)."""
    live = LiveFeeds(js, names.stream, [own_nats.url], size=1)
    feeds = [live.feed(names.job_subjects(job)) for job in ("a", "b")]
    first = {job: await publish(js, names, job, 1, 3) for job in ("a", "b")}
    try:
        for feed, job in zip(feeds, ("a", "b"), strict=True):
            await feed.start(first[job][0])
            assert await taken_until(feed, first[job][-1]) == first[job]
        link = live.links[0]
        assert link._transport is not None
        link._transport.abort()  # the fault: the connection is gone
        more = {job: await publish(js, names, job, 4, 4) for job in ("a", "b")}
        for feed, job in zip(feeds, ("a", "b"), strict=True):
            assert await taken_until(feed, more[job][-1]) == more[job]
            assert feed.pending == 0
            assert feed.restarts == 1
    finally:
        await live.close()


async def test_a_deleted_consumer_is_started_again_after_the_last_message(
    own_nats: EmbeddedNats, js: JetStreamContext, names: Names
) -> None:
    """The feed's consumer deleted under it (an operator, a server's restart): a new one
    starts after the last message received; nothing skipped, nothing twice."""
    live = LiveFeeds(js, names.stream, [own_nats.url], size=1, heartbeat=HEARTBEAT)
    feed = live.feed(names.job_subjects("a"))
    first = await publish(js, names, "a", 1, 3)
    try:
        await feed.start(first[0])
        assert await taken_until(feed, first[-1]) == first
        assert feed._consumer is not None
        await js.delete_consumer(names.stream, feed._consumer)
        more = await publish(js, names, "a", 4, 3)
        assert await taken_until(feed, more[-1]) == more
        assert feed.restarts == 1
    finally:
        await live.close()


async def test_a_feed_not_taken_holds_little_and_holds_up_no_other_feed(
    own_nats: EmbeddedNats, js: JetStreamContext, names: Names
) -> None:
    """One connection, two jobs: a flood nobody takes (its viewers slow) stops at about a
    pull's worth past the feed's bound while the quiet job's line still arrives; taken at
    last, the flood comes whole and in order."""
    live = LiveFeeds(js, names.stream, [own_nats.url], size=1)
    flood = live.feed(names.job_subjects("flood"))
    quiet = live.feed(names.job_subjects("quiet"))
    try:
        await flood.start(1)
        await quiet.start(1)
        text = "x" * 100_000
        flood_seqs = [
            await eventstore.publish(js, names, line("flood", n, text)) for n in range(60)
        ]
        quiet_seq = (await publish(js, names, "quiet", 1, 1))[0]
        assert await taken_until(quiet, quiet_seq) == [quiet_seq]
        async with asyncio.timeout(30):
            while flood.buffered_bytes < FEED_BYTES:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # more would have come by now
        assert flood.buffered_bytes <= FEED_BYTES + PULL_BYTES
        assert await taken_until(flood, flood_seqs[-1]) == flood_seqs
    finally:
        await live.close()


async def test_a_message_larger_than_a_pull_comes_alone(
    own_nats: EmbeddedNats, js: JetStreamContext, names: Names
) -> None:
    """A message over ``PULL_BYTES`` (a flood's large LineLogged) is asked for by itself; the
    ones around it come as usual."""
    live = LiveFeeds(js, names.stream, [own_nats.url], size=1)
    feed = live.feed(names.job_subjects("a"))
    try:
        await feed.start(1)
        seqs = await publish(js, names, "a", 1, 2)
        seqs.append(await eventstore.publish(js, names, line("a", 3, "y" * (PULL_BYTES * 2))))
        seqs += await publish(js, names, "a", 4, 2)
        assert await taken_until(feed, seqs[-1]) == seqs
    finally:
        await live.close()


async def frozen(own_nats: EmbeddedNats, seconds: float) -> None:
    assert own_nats.proc is not None
    os.kill(own_nats.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(own_nats.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize(
    ("pause", "reconnects"),
    [(HEARTBEAT * (DEAD_AFTER - 1.5), False), (HEARTBEAT * (DEAD_AFTER + 1.5), True)],
    ids=["shorter", "longer"],
)
async def test_a_frozen_server_shorter_than_the_silence_limit_is_waited_for_and_longer_is_left(
    own_nats: EmbeddedNats, js: JetStreamContext, names: Names, pause: float, reconnects: bool
) -> None:
    """nats-server SIGSTOPped for less than ``DEAD_AFTER`` heartbeats: the feeds wait for it on
    the same connection and consumer; for more: the connection counts as lost, the feeds
    start again after their last message. Every message once, in order, either way."""
    live = LiveFeeds(js, names.stream, [own_nats.url], size=2, heartbeat=HEARTBEAT)
    feeds = [live.feed(names.job_subjects(job)) for job in ("a", "b", "c")]
    try:
        for feed in feeds:
            await feed.start(1)
        before = {job: await publish(js, names, job, 1, 2) for job in ("a", "b", "c")}
        for feed, job in zip(feeds, ("a", "b", "c"), strict=True):
            assert await taken_until(feed, before[job][-1]) == before[job]
        connects = live.connects
        await frozen(own_nats, pause)
        after = {job: await publish(js, names, job, 3, 2) for job in ("a", "b", "c")}
        for feed, job in zip(feeds, ("a", "b", "c"), strict=True):
            assert await taken_until(feed, after[job][-1]) == after[job]
        assert (live.connects > connects) is reconnects
        assert any(feed.restarts for feed in feeds) is reconnects
    finally:
        await live.close()
