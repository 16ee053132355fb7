"""The replay's stream reader: every event once and in order, whatever the link does."""

from __future__ import annotations

import asyncio

import nats
import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.streamreader import GapError, StreamReader, StreamReaderError
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.projector import feed as feed_module
from jobrunner.services.projector.feed import EventFeed
from jobrunner.services.projector.projections import Change, project
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


async def test_the_event_feed_carries_on_after_a_nats_restart(settings: Settings) -> None:
    """NATS restarts while the feed is part-way through a stream too big to have been read ahead,
    and more events arrive after it: the feed reconnects, goes on after the last event it handed
    out, and sees every event exactly once."""
    with scratch_dir("jobrunner-test-restart-nats-") as root:
        port = free_port()
        server = EmbeddedNats(root / "nats", port=port)
        server.start()
        private = Settings(nats_url=server.url, prefix=settings.prefix)
        before: list[events.Event] = []
        for n in range(40):  # ~20 MB: far more than the feed reads ahead (8 socket reads)
            before += logged_job(f"job{n}", lines=5000, batch=10)
        await publish(private, before)
        names = Names(settings.prefix)
        nc = await eventstore.connect(private, "test")
        feed = EventFeed(nc.jetstream(), names, private, name="test")
        seen: list[int] = []
        try:
            await feed.start(1)
            while len(seen) < 1000:
                seen += [seq for seq, _ in await feed.fetch(timeout=5)]
            await asyncio.to_thread(server.stop)
            server = EmbeddedNats(root / "nats", port=port)
            await asyncio.to_thread(server.start)
            last = await publish(private, logged_job("after-restart", lines=50, batch=10))
            while not seen or seen[-1] < last:
                batch = await feed.fetch(timeout=30)
                assert batch, "the feed did not come back after the restart"
                seen += [seq for seq, _ in batch]
        finally:
            await feed.close()
            await eventstore.close(nc)
            server.stop()
    assert seen == list(range(1, last + 1))


class FakeWriter:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data


def delivery(
    stream_seq: int, consumer_seq: int, payload: bytes, subject: str = "s.job.j.lines"
) -> bytes:
    reply = f"$JS.ACK.S_EVENTS.c1.1.{stream_seq}.{consumer_seq}.1700000000000000000.0"
    headers = b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n"
    size = len(headers) + len(payload)
    return (
        f"HMSG {subject} 1 {reply} {len(headers)} {size}\r\n".encode()
        + headers
        + (payload + b"\r\n")
    )


def parser(skip: bytes | None = None) -> StreamReader:
    reader = StreamReader(
        None,  # type: ignore[arg-type]
        [],
        "S_EVENTS",
        "s.job.>",
        skip_subject_suffix=skip,
    )
    reader._writer = FakeWriter()  # type: ignore[assignment]
    return reader


def test_messages_read_before_a_gap_are_handed_out_and_the_gap_raised_after() -> None:
    reader = parser()
    data = b"".join(delivery(n, n, b"{}") for n in (1, 2, 3)) + delivery(5, 5, b"{}")
    assert [seq for seq, _ in reader._parse(data)] == [1, 2, 3]
    assert reader.last_seq == 3, "a restart goes on at 4"
    assert isinstance(reader._error, GapError)


def test_messages_read_before_a_server_error_are_not_lost() -> None:
    reader = parser()
    data = delivery(1, 1, b"a") + delivery(2, 2, b"b") + b"-ERR 'Stale Connection'\r\n"
    assert reader._parse(data) == [(1, b"a"), (2, b"b")]
    assert reader._error is not None
    assert "Stale Connection" in str(reader._error)


def test_a_stored_message_with_an_empty_body_is_a_message_not_a_heartbeat() -> None:
    reader = parser()
    assert reader._parse(delivery(7, 1, b"") + delivery(8, 2, b"{}")) == [(7, b""), (8, b"{}")]
    assert reader._error is None


def test_skipped_subjects_keep_their_place_without_their_payload() -> None:
    """A reader that skips line messages still counts each in order (sequence, gap check)."""
    reader = parser(skip=b".lines")
    data = (
        delivery(1, 1, b"a", "s.job.j.status")
        + delivery(2, 2, b"many lines")
        + delivery(3, 3, b"c", "s.job.j.progress")
    )
    assert reader._parse(data) == [(1, b"a"), (2, b""), (3, b"c")]
    with pytest.raises(GapError):
        reader._parse(delivery(5, 5, b"", "s.job.j.status"))


def test_flow_control_and_ping_are_answered_and_a_message_split_across_reads_is_whole() -> None:
    reader = parser()
    flow_control = (
        b"HMSG inbox 1 $JS.FC.S_EVENTS.c1.abc 36 36\r\nNATS/1.0 100 FlowControl Request\r\n\r\n\r\n"
    )
    data = delivery(1, 1, b"first") + flow_control + b"PING\r\n" + delivery(2, 2, b"second")
    cut = len(data) - 5
    assert reader._parse(data[:cut]) == [(1, b"first")]
    assert reader._parse(data[cut:]) == [(2, b"second")]
    assert reader._writer is not None
    assert reader._writer.sent == b"PUB $JS.FC.S_EVENTS.c1.abc 0\r\n\r\nPONG\r\n"  # type: ignore[attr-defined]


def heartbeat(last_consumer_seq: int) -> bytes:
    headers = (
        f"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: {last_consumer_seq}\r\n"
        "Nats-Last-Stream: 99\r\n\r\n"
    ).encode()
    return f"HMSG inbox 1 {len(headers)} {len(headers)}\r\n".encode() + headers + b"\r\n"


def test_a_lost_last_delivery_is_noticed_at_the_next_heartbeat() -> None:
    """The stream went quiet right after a delivery that never arrived: the idle heartbeat names
    it, so the reader restarts from the last one received instead of waiting for new events."""
    reader = parser()
    assert reader._parse(delivery(1, 1, b"a") + delivery(2, 2, b"b") + heartbeat(2)) == [
        (1, b"a"),
        (2, b"b"),
    ]
    assert reader._error is None, "a heartbeat naming the last delivery received is quiet"
    with pytest.raises(GapError, match="delivery 3"):
        reader._parse(heartbeat(3))
    assert reader.last_seq == 2, "a restart goes on after the last message received"


async def test_a_reader_stops_when_cancelled_while_messages_keep_arriving(
    settings: Settings,
) -> None:
    """Cancelling the task that reads (how the projector and the API stop a reader) ends it
    every time, also when the cancel comes as a read completes (a stopped projector once read
    on for good, keeping its service from stopping)."""
    names = Names(settings.prefix)
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    subject = f"{settings.prefix}.job.cancelled-reader.lines"

    async def publish_on() -> None:
        while True:
            await js.publish(subject, b"x" * 100)

    async def read_on(reader: StreamReader) -> None:
        async for _ in reader.batches():
            pass

    publisher = asyncio.create_task(publish_on())
    reader = StreamReader(js, [settings.nats_url], names.stream, subject)
    try:
        await reader.open(1)
        for attempt in range(200):
            task = asyncio.create_task(read_on(reader))
            await asyncio.sleep(0.001 * (attempt % 7))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert task in done, f"the reader read on after its cancel (attempt {attempt})"
    finally:
        publisher.cancel()
        await reader.close()
        await nc.close()


async def test_the_event_feed_gathers_what_arrives_while_the_projector_waits(
    settings: Settings,
) -> None:
    """The projector paces its transactions (``TRANSACTION_INTERVAL``): ``fetch_more`` adds to
    a batch what arrived while it waited, in order, so a trickle is applied a few events per
    transaction instead of one."""
    first = logged_job("trickle-a", lines=3, batch=3)
    last = await publish(settings, first)
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    feed = EventFeed(nc.jetstream(), names, settings, name="test")
    try:
        await feed.start(last - len(first) + 1)
        seen = [seq for seq, _ in await feed.fetch(timeout=30)]
        while seen[-1] < last:
            seen += [seq for seq, _ in await feed.fetch(timeout=30)]
        publishing = asyncio.create_task(publish(settings, logged_job("trickle-b", 3, batch=3)))
        gathered = [seq for seq, _ in await feed.fetch_more(len(seen), 2.0)]
        later = await publishing
    finally:
        await feed.close()
        await eventstore.close(nc)
    assert gathered == list(range(last + 1, later + 1))


async def test_the_event_feed_decodes_nothing_while_held(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The live projector holds its feed from a fetch until its batch's ``COPY`` is under way: a
    free feed decodes the next transaction's worth of a backlog at once (its socket has data, so
    nothing yields), while the batch's first statements wait for the event loop and Postgres
    sits idle in the transaction. Held, it decodes nothing; resumed, it reads on in order."""
    backlog = logged_job("backlog", lines=60_000, batch=100)  # about 6 MB of 100-line events
    last = await publish(settings, backlog)
    projected = [0]  # events the feed has decoded and projected so far
    decoded = asyncio.Event()

    def counting(event: events.Event, seq: int) -> list[Change]:
        projected[0] += 1
        decoded.set()
        return project(event, seq)

    monkeypatch.setattr(feed_module, "project", counting)
    nc = await eventstore.connect(settings, "test")
    feed = EventFeed(nc.jetstream(), Names(settings.prefix), settings, name="test")
    try:
        await feed.start(1)
        seqs = [seq for seq, _ in await feed.fetch(timeout=30)]
        assert seqs
        feed.hold()
        held_at = projected[0]
        for _ in range(30):
            await asyncio.sleep(0.01)
        assert projected[0] == held_at, "the feed decoded while held"
        assert held_at < len(backlog), "the whole backlog was decoded before the hold"
        decoded.clear()
        feed.resume()
        await asyncio.wait_for(decoded.wait(), 30)
        while seqs[-1] < last:
            batch = await feed.fetch(timeout=30)
            assert batch, "the feed stopped"
            seqs += [seq for seq, _ in batch]
            feed.hold()  # a fetch lets it go again
    finally:
        await feed.close()
        await eventstore.close(nc)
    assert seqs == list(range(1, last + 1))


async def test_the_event_feed_waits_before_reopening_on_a_closed_connection(
    settings: Settings,
) -> None:
    """nats-py's connection closed for good (not reconnecting): the feed waits its backoff before
    opening its reader again, rather than opening TCP connections in a loop."""
    nc = await eventstore.connect(settings, "test")
    feed = EventFeed(nc.jetstream(), Names(settings.prefix), settings, name="test")
    await eventstore.close(nc)
    assert nc.is_closed
    # The backoff after a first failure is 0.2 s: not over after half of it.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await feed._before_reopening(1)
