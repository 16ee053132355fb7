"""The replay's stream reader: every event once and in order, whatever the link does."""

from __future__ import annotations

import asyncio

import nats
import pytest

from contracts import events
from contracts.names import Names
from jobrunner import eventstore
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from jobrunner.settings import Settings
from jobrunner.streamreader import StreamReader, StreamReaderError
from services.projector.feed import EventFeed
from tests.history_support import logged_job, publish


async def publish_raw(settings: Settings, count: int, size: int) -> None:
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    payload = b"x" * size
    for start in range(0, count, 1000):
        acks = [
            await js.publish_async(f"{settings.prefix}.job.j{n % 7}.lines", payload)
            for n in range(start, min(start + 1000, count))
        ]
        await asyncio.gather(*acks)
    await eventstore.close(nc)


async def read_until_caught_up(reader: StreamReader) -> list[int]:
    seqs: list[int] = []
    async for batch in reader.batches():
        seqs += [seq for seq, _ in batch]
        if reader.pending == 0:
            return seqs
    raise AssertionError("the reader stopped")


async def test_reads_every_message_in_order_from_a_sequence_past_flow_control(
    settings: Settings,
) -> None:
    """30 MB of messages (many flow-control windows): each one from the start sequence on, once,
    in order, and the reader knows when it has caught up with the stream."""
    await publish_raw(settings, count=30_000, size=1000)
    names = Names(settings.prefix)
    nc = await nats.connect(settings.nats_url)
    reader = StreamReader(nc.jetstream(), [settings.nats_url], names.stream, names.all_subjects)
    try:
        await reader.open(5001)
        seqs = await asyncio.wait_for(read_until_caught_up(reader), timeout=120)
    finally:
        await reader.close()
        await nc.close()
    assert seqs == list(range(5001, 30_001))


async def test_a_server_with_a_password_is_read_and_a_wrong_password_is_refused_clearly(
    settings: Settings,
) -> None:
    with scratch_dir("jobrunner-test-auth-nats-") as root:
        server = EmbeddedNats(root / "nats", user="jobrunner", password="s3cret-pass")
        server.start()
        try:
            private = Settings(nats_url=server.url, prefix=settings.prefix)
            await publish_raw(private, count=10, size=100)
            names = Names(settings.prefix)
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            reader = StreamReader(js, [server.url], names.stream, names.all_subjects)
            await reader.open(1)
            assert await asyncio.wait_for(read_until_caught_up(reader), 30) == list(range(1, 11))
            await reader.close()

            wrong = server.url.replace("s3cret", "wrong")
            refused = StreamReader(js, [wrong], names.stream, names.all_subjects)
            with pytest.raises(StreamReaderError, match=r"(?i)authorization"):
                await refused.open(1)
            await refused.close()
            await nc.close()
        finally:
            server.stop()


async def test_the_replay_feed_carries_on_after_a_nats_restart(settings: Settings) -> None:
    """NATS restarts while a replay reads: the feed reconnects and goes on after the last event
    it received, so the replay still sees every event exactly once."""
    with scratch_dir("jobrunner-test-restart-nats-") as root:
        port = free_port()
        server = EmbeddedNats(root / "nats", port=port)
        server.start()
        private = Settings(nats_url=server.url, prefix=settings.prefix)
        history: list[events.Event] = []
        for n in range(40):
            history += logged_job(f"job{n}", lines=100, batch=10)
        last = await publish(private, history)
        names = Names(settings.prefix)
        nc = await eventstore.connect(private, "test")
        feed = EventFeed(nc.jetstream(), names, private, name="test")
        seen: list[int] = []
        try:
            await feed.start(1)
            while len(seen) < last // 3:
                seen += [seq for seq, _ in await feed.fetch(timeout=5)]
            await asyncio.to_thread(server.stop)
            server = EmbeddedNats(root / "nats", port=port)
            await asyncio.to_thread(server.start)
            while not seen or seen[-1] < last:
                batch = await feed.fetch(timeout=30)
                assert batch, "the feed did not come back after the restart"
                seen += [seq for seq, _ in batch]
        finally:
            await feed.close()
            await eventstore.close(nc)
            server.stop()
    assert seen == list(range(1, last + 1))
