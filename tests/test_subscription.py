"""The one reader of the stream from a sequence: every message once, in order, in batches."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError, ServiceUnavailableError
from structlog.testing import capture_logs

from jobrunner.common import ackinbox, retry
from jobrunner.common.settings import Settings
from jobrunner.common.subscription import (
    OrderedReader,
    deletes_pending,
    fetch_one,
    fetch_some,
    forget_deletes,
    last_message,
    last_stored,
    next_stored,
    ordered_reader,
    position,
    reopen_after_reconnect,
)
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import nats_server_binary
from jobrunner.embedded.serverprocess import free_port

pytestmark = pytest.mark.timeout(120)


async def publish(js: JetStreamContext, subjects: list[str], size: int = 10) -> None:
    for start in range(0, len(subjects), 1000):
        acks = [
            await js.publish_async(subject, b"%d" % n + b"x" * size)
            for n, subject in enumerate(subjects[start : start + 1000], start)
        ]
        await asyncio.gather(*acks)


async def read_all(reader: OrderedReader, count: int) -> list[list[int]]:
    """The stream sequences of ``count`` messages, as the batches they came in."""
    batches: list[list[int]] = []
    while sum(map(len, batches)) < count:
        batch = await reader.next_batch(10)
        assert batch, "the reader went idle before every message arrived"
        batches.append([m.metadata.sequence.stream for m in batch])
    return batches


async def test_reads_every_message_from_a_sequence_in_order_and_in_batches(
    settings: Settings, js: JetStreamContext
) -> None:
    """20,000 messages from sequence 5,001 on arrive once each, in order, many per wake-up."""
    names = Names(settings.prefix)
    await publish(js, [names.job_kind_subject("a", "lines")] * 20_000)
    async with ordered_reader(js, names.stream, names.all_subjects, start_seq=5001) as reader:
        batches = await read_all(reader, 15_000)
    assert [seq for batch in batches for seq in batch] == list(range(5001, 20_001))
    assert len(batches) < 15_000 / 10


async def test_a_readers_sub_goes_out_before_its_consumers_create_in_one_write(
    settings: Settings, js: JetStreamContext
) -> None:
    """The reader subscribes its deliver subject before it creates its consumer, both in one
    socket write (the first events then follow the create's reply, not a SUB's round trip
    later); its consumer is known by name (its count asks for its info)."""
    names = Names(settings.prefix)
    await publish(js, [names.job_kind_subject("written", "status")])
    transport = js._nc._transport
    writelines = transport.writelines
    writes: list[bytes] = []

    def recorded(payload: list[bytes]) -> object:
        writes.append(b"".join(payload))
        return writelines(payload)

    transport.writelines = recorded
    try:
        subjects = names.job_subjects("written")
        async with ordered_reader(js, names.stream, subjects, start_seq=1) as reader:
            assert len(await reader.next_batch(10)) == 1
            assert await reader.count() == 1
    finally:
        transport.writelines = writelines
    creating = [w for w in writes if b"$JS.API.CONSUMER.CREATE." in w]
    assert len(creating) == 1
    sub = re.search(rb"(?:^|\r\n)SUB (\S+)", creating[0])
    assert sub is not None
    assert sub.start() < creating[0].index(b"$JS.API.CONSUMER.CREATE.")
    assert b'"deliver_subject": "' + sub.group(1) + b'"' in creating[0]


async def test_a_reader_whose_consumer_is_lost_goes_on_from_where_it_was(
    settings: Settings, js: JetStreamContext
) -> None:
    """Its consumer gone from the server (a NATS restart loses it): once the heartbeats are
    missed nats-py makes it again from the next sequence (unnamed: the first one's name is not
    reused), and the reader gets every later message once, in order."""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("lost", "status")
    await publish(js, [subject] * 2)
    async with ordered_reader(js, names.stream, names.job_subjects("lost"), start_seq=1) as reader:
        first = [m.metadata.sequence.stream for m in await reader.next_batch(10)]
        while len(first) < 2:
            first += [m.metadata.sequence.stream for m in await reader.next_batch(10)]
        assert reader.sub is not None
        name = reader.sub._consumer
        await js.delete_consumer(names.stream, name)
        await publish(js, [subject] * 2)
        later: list[int] = []
        async with asyncio.timeout(60):
            while len(later) < 2:
                later += [m.metadata.sequence.stream for m in await reader.next_batch(30)]
            # The new consumer's name is set once its create's reply is handled.
            while reader.sub._consumer == name:  # noqa: ASYNC110 - set by nats-py's own task
                await asyncio.sleep(0.05)
        assert await reader.count() == 2  # the new consumer's count, from where it started
    assert later == [first[-1] + 1, first[-1] + 2]


async def test_a_kv_watch_whose_consumer_is_lost_goes_on_at_once_after_a_reconnect(
    js: JetStreamContext,
) -> None:
    """A KV watch (the runners' lock board) is an ordered consumer kept in the server's memory
    too: after a reconnect (here its consumer deleted, as a restart loses it) it is made again
    from where it was at once, not when nats-py's check finds two heartbeats missed (10-20 s),
    and every later change comes once, in order."""
    bucket = f"watch_{uuid.uuid4().hex[:12]}"
    kv = await js.create_key_value(bucket=bucket, history=1)
    try:
        await kv.put("a", b"1")
        watcher = await kv.watchall()
        first = await watcher.updates(timeout=5)  # type: ignore[no-untyped-call]
        assert (first.key, first.value) == ("a", b"1")
        assert await watcher.updates(timeout=5) is None  # type: ignore[no-untyped-call]
        await js.delete_consumer(f"KV_{bucket}", watcher._sub._consumer)
        reopen_after_reconnect(js._nc)
        await kv.put("b", b"2")
        await kv.put("a", b"3")
        # Below the 10 s at which nats-py's own check would make the consumer again.
        later = [await watcher.updates(timeout=4) for _ in range(2)]  # type: ignore[no-untyped-call]
        assert [(e.key, e.value) for e in later] == [("b", b"2"), ("a", b"3")]
        await watcher.stop()  # type: ignore[no-untyped-call]
    finally:
        await js.delete_key_value(bucket)


async def test_an_idle_reader_gets_an_empty_batch(settings: Settings, js: JetStreamContext) -> None:
    """With nothing to read, a batch is empty once the idle timeout passed."""
    names = Names(settings.prefix)
    async with ordered_reader(js, names.stream, names.all_subjects, start_seq=1) as reader:
        assert await reader.next_batch(0.2) == []
        await publish(js, [names.job_kind_subject("a", "status")])
        assert len(await reader.next_batch(10)) == 1


async def test_several_filter_subjects_read_only_those(
    settings: Settings, js: JetStreamContext
) -> None:
    """Reading status and progress of every job skips their lines."""
    names = Names(settings.prefix)
    kinds = ["lines", "status", "lines", "progress", "lines"] * 200
    await publish(js, [names.job_kind_subject(f"j{i % 3}", k) for i, k in enumerate(kinds)])
    subjects = [names.kind_subjects("status"), names.kind_subjects("progress")]
    async with ordered_reader(js, names.stream, subjects) as reader:
        assert await reader.count() == 400
        batches = await read_all(reader, 400)
    wanted = [seq for seq, kind in enumerate(kinds, 1) if kind != "lines"]
    assert [seq for batch in batches for seq in batch] == wanted


async def test_a_reader_that_does_not_take_holds_a_bounded_batch(
    settings: Settings, js: JetStreamContext
) -> None:
    """A reader left alone buffers about its byte limit, and then still gets every message."""
    names = Names(settings.prefix)
    await publish(js, [names.job_kind_subject("a", "lines")] * 3000, size=1000)
    limit = 64 * 1024
    async with ordered_reader(
        js, names.stream, names.all_subjects, max_buffered_bytes=limit
    ) as reader:
        async with asyncio.timeout(30):
            while True:
                if reader._bytes >= limit:
                    break
                await asyncio.sleep(0.01)
        held = reader._bytes
        batches = await read_all(reader, 3000)
    assert held < limit + 1100
    assert [seq for batch in batches for seq in batch] == list(range(1, 3001))


async def test_the_last_message_of_a_subject(settings: Settings, js: JetStreamContext) -> None:
    """The newest message of a subject, and none for a subject without any."""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("a", "status")
    assert await last_message(js, names.stream, subject) is None
    await publish(js, [subject, subject, names.job_kind_subject("b", "status")])
    last = await last_message(js, names.stream, subject)
    assert last is not None
    assert last.seq == 2


async def pull_subscription(
    js: JetStreamContext, settings: Settings, durable: str
) -> JetStreamContext.PullSubscription:
    names = Names(settings.prefix)
    return await js.pull_subscribe(names.job_kind_subject("*", "requested"), durable, names.stream)


async def test_a_stopping_service_does_not_wait_for_capacity(
    settings: Settings, js: JetStreamContext
) -> None:
    """A runner whose every slot is busy still stops when asked: its wait for a free slot ends."""
    sub = await pull_subscription(js, settings, "full-capacity")
    full, stop = asyncio.Semaphore(0), asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    assert await asyncio.wait_for(fetch_one(sub, full, stop), 30) is None
    assert full.locked()  # nothing taken, nothing given back that was not taken


async def free_units(capacity: asyncio.Semaphore) -> int:
    """How many units of ``capacity`` are free (taken and given back to count them)."""
    count = 0
    while not capacity.locked():
        await capacity.acquire()  # free: returns at once
        count += 1
    for _ in range(count):
        capacity.release()
    return count


async def test_a_backlog_is_taken_as_far_as_capacity_allows(
    settings: Settings, js: JetStreamContext
) -> None:
    """A runner with 5 free slots and 40 requests waiting takes 5 in one fetch, holding a slot
    for each, and the rest stay for later (or for other runners)."""
    names = Names(settings.prefix)
    await publish(js, [names.job_kind_subject(f"b{n}", "requested") for n in range(40)])
    sub = await pull_subscription(js, settings, "backlog")
    capacity = asyncio.Semaphore(5)
    msgs = await asyncio.wait_for(fetch_some(sub, capacity), 30)
    assert [msg.metadata.sequence.stream for msg in msgs] == [1, 2, 3, 4, 5]
    assert await free_units(capacity) == 0
    rest = await asyncio.wait_for(fetch_some(sub, asyncio.Semaphore(100), most=100), 30)
    assert [msg.metadata.sequence.stream for msg in rest] == list(range(6, 41))


async def test_units_no_message_came_for_are_given_back(
    settings: Settings, js: JetStreamContext
) -> None:
    """With 3 requests waiting and 10 free slots, the 3 taken hold 3 slots; 7 stay free."""
    names = Names(settings.prefix)
    await publish(js, [names.job_kind_subject(f"c{n}", "requested") for n in range(3)])
    sub = await pull_subscription(js, settings, "few")
    capacity = asyncio.Semaphore(10)
    msgs = await asyncio.wait_for(fetch_some(sub, capacity), 30)
    assert len(msgs) == 3
    assert await free_units(capacity) == 7


async def test_a_fetch_without_messages_gives_every_unit_back(
    settings: Settings, js: JetStreamContext
) -> None:
    """Nothing waiting: the fetch ends empty after its short wait and no slot stays taken."""
    sub = await pull_subscription(js, settings, "empty")
    capacity = asyncio.Semaphore(10)
    assert await asyncio.wait_for(fetch_some(sub, capacity), 30) == []
    assert await free_units(capacity) == 10


@pytest.fixture
def nats_without_jetstream() -> Iterator[str]:
    """A nats-server of this test's own, without JetStream: its URL."""
    port = free_port()
    server = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


async def test_a_message_get_without_jetstream_is_an_error_worth_retrying(
    nats_without_jetstream: str,
) -> None:
    """A server whose JetStream does not answer (one restarting, say) gets the message-gets
    sent again by the retries around them (an ending being stored among them), not refused."""
    nc = await nats.connect(nats_without_jetstream)
    try:
        js, inbox = nc.jetstream(), ackinbox.of(nc)
        for read in (last_stored(inbox, js, "S", "a.b"), next_stored(inbox, js, "S", "a.b", 1)):
            with pytest.raises(ServiceUnavailableError) as raised:
                await read
            assert retry.is_transient(raised.value)
    finally:
        await nc.close()


async def test_a_reader_that_does_not_take_holds_the_server_back_and_loses_nothing(
    settings: Settings, js: JetStreamContext
) -> None:
    """A reader whose viewers stopped taking (its batch full) makes the server wait for the
    flow-control reply: its messages stay in JetStream, not in nats-py's queue, which would drop
    what passes its byte limit (a "slow consumer"), and every message still arrives, once, in
    order. (Before: nats-py answered each flow-control request as it came, counting a message
    as delivered when it arrived, so a flood of line batches ran into the queue's limit and the
    SSE viewers of the busy job lost whole batches of lines.)"""
    names = Names(settings.prefix)
    count, size = 900, 100_000  # 90 MB: more than the queue's 64 MiB
    await publish(js, [names.job_kind_subject("a", "lines")] * count, size=size)
    async with ordered_reader(
        js, names.stream, names.all_subjects, max_buffered_bytes=64 * 1024
    ) as reader:
        assert reader.sub is not None
        # Wait until the server stops sending (it waits for flow control) or sent everything.
        last, still = -1, 0
        async with asyncio.timeout(60):
            while still < 10:
                info = await reader.sub.consumer_info()
                sent = info.delivered.stream_seq if info.delivered else 0
                still = still + 1 if sent == last else 0
                last = sent
                await asyncio.sleep(0.1)
        queued = reader.sub._sub._pending_size
        batches = await read_all(reader, count)
    assert [seq for batch in batches for seq in batch] == list(range(1, count + 1))
    assert last < count, "the server sent everything at once: flow control did not hold it"
    assert queued < 64 * 1024 * 1024


def small_nats_py_queues(js: JetStreamContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """Readers made on ``js`` from now on get a nats-py queue of 1 MB, less than the server's
    flow-control window (about 2 MB at first): nats-py drops ("slow consumer") from the first
    window on, as it drops past its 64 MiB under a long pause."""
    subscribe_bind = js.subscribe_bind

    async def with_a_small_queue(*args: Any, **options: Any) -> Any:
        return await subscribe_bind(*args, **(options | {"pending_bytes_limit": 1_000_000}))

    monkeypatch.setattr(js, "subscribe_bind", with_a_small_queue)


async def read_until_idle(reader: OrderedReader, idle: float) -> list[int]:
    seqs: list[int] = []
    while batch := await reader.next_batch(idle):
        seqs += [m.metadata.sequence.stream for m in batch]
    return seqs


async def test_messages_nats_py_drops_from_its_queue_are_read_again(
    settings: Settings, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should nats-py drop messages past its queue's byte limit, the reader hears of it and
    reads again after the last message it kept: every message arrives once, in order."""
    names = Names(settings.prefix)
    count, size = 300, 100_000
    await publish(js, [names.job_kind_subject("a", "lines")] * count, size=size)
    consumers = (await js.stream_info(names.stream)).state.consumer_count
    small_nats_py_queues(js, monkeypatch)
    with capture_logs() as logs:
        async with ordered_reader(
            js, names.stream, names.all_subjects, max_buffered_bytes=64 * 1024
        ) as reader:
            first = reader.sub
            batches = await read_all(reader, count)
            assert reader.sub is not first, "nothing dropped: the test tested nothing"
            # The consumers it left for a new one are deleted: one stays, the reader's own.
            async with asyncio.timeout(10):
                while (await js.stream_info(names.stream)).state.consumer_count != consumers + 1:  # noqa: ASYNC110 - the server's count: nothing signals it
                    await asyncio.sleep(0.05)
    assert [seq for batch in batches for seq in batch] == list(range(1, count + 1))
    assert "ordered reader lost messages in nats-py: reading them again" in [
        log["event"] for log in logs
    ]


async def test_the_last_messages_of_a_flood_dropped_while_nobody_reads_are_read_again(
    settings: Settings, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of a flood dropped by nats-py while the reader's viewers read nothing (12 s:
    its heartbeats come meanwhile, and nats-py makes its consumer again after the hole): once
    they read again they get every message, and the ones published after it, once, in order.
    (Before, a drop was noticed only by a later message of the same consumer, so the last
    ones stayed lost: messages 12 to 15 of these 20.) Meanwhile the reader holds no consumer:
    the one it dropped is deleted at once, and nats-py makes none after it (before: the old
    one stayed, flow-controlled windows were sent to it only to be dropped, and a heartbeat
    made nats-py create another that nobody deleted)."""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("a", "lines")
    await publish(js, [subject] * 15, size=100_000)
    consumers = (await js.stream_info(names.stream)).state.consumer_count
    small_nats_py_queues(js, monkeypatch)
    async with ordered_reader(
        js, names.stream, names.all_subjects, max_buffered_bytes=64 * 1024
    ) as reader:
        first = reader.sub
        await asyncio.sleep(12)  # past two heartbeats (5 s) of the dropped consumer
        assert (await js.stream_info(names.stream)).state.consumer_count == consumers
        seqs = await read_until_idle(reader, 3)
        assert seqs == list(range(1, 16))
        await publish(js, [subject] * 5, size=100_000)
        seqs += await read_until_idle(reader, 3)
        assert reader.sub is not first, "nothing dropped: the test tested nothing"
    assert seqs == list(range(1, 21))


async def test_a_flood_dropped_while_nobody_reads_and_more_published_meanwhile_is_read_whole(
    settings: Settings, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, with the next messages published during the pause: a new consumer of nats-py's
    own starts after the hole, its first message is not taken for the next one (before: 12 to
    20 lost, and a viewer waiting for the job's end waited forever)."""
    names = Names(settings.prefix)
    subject = names.job_kind_subject("a", "lines")
    await publish(js, [subject] * 15, size=100_000)
    small_nats_py_queues(js, monkeypatch)
    async with ordered_reader(
        js, names.stream, names.all_subjects, max_buffered_bytes=64 * 1024
    ) as reader:
        first = reader.sub
        await asyncio.sleep(12)
        for n in range(15, 20):  # one at a time: each behind the last one's ack
            await js.publish(subject, b"%d" % n + b"x" * 100_000)
        seqs = await read_until_idle(reader, 3)
        assert reader.sub is not first, "nothing dropped: the test tested nothing"
    assert seqs == list(range(1, 21))


# --- flow-control answers sent as the reader takes (session 41)


def hold_points(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Each flow-control request nats-py holds from now on (it came while messages sent before
    it were still queued), by its reply subject: the stream sequence of the last message that
    came before it (nats-py's ``_sseq`` as it reads the request)."""
    points: dict[str, int] = {}
    schedule = JetStreamContext._JSI.schedule_flow_control_response

    def hold(jsi: Any, reply: str) -> None:
        points[reply] = jsi._sseq
        schedule(jsi, reply)

    monkeypatch.setattr(JetStreamContext._JSI, "schedule_flow_control_response", hold)
    return points


async def test_a_reader_that_takes_promptly_never_leaves_the_server_waiting_for_its_answer(
    settings: Settings, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that takes what comes reads a backlog of many flow-control windows without the
    server ever stalling for its answer, even for requests that came while the window's last
    messages were still queued: the reader sends those answers as it takes, and is the only
    one to (nats-py's own look for held answers, every 0.25 s, is stopped), so an answer it
    missed would stall the server until its next idle heartbeat (5 s), which says so
    (``Nats-Consumer-Stalled``). (Before: only that look sent them, up to a quarter second of
    an idle server per window; a job's stream read from its start came at a third of its
    speed.)"""
    names = Names(settings.prefix)
    count = 20_000  # 20 MB: many windows (about 2 MB at first)
    await publish(js, [names.job_kind_subject("a", "lines")] * count, size=1000)
    held = hold_points(monkeypatch)
    stalls: list[str] = []

    async def note_stall(msg: Msg) -> None:
        if msg.headers and api.Header.CONSUMER_STALLED in msg.headers:
            stalls.append(msg.headers[api.Header.CONSUMER_STALLED])

    spy = await nats.connect(settings.nats_url)  # sees what the server sends the reader
    try:
        async with ordered_reader(js, names.stream, names.all_subjects) as reader:
            assert reader.sub is not None
            jsi = reader.sub._sub._jsi
            await asyncio.sleep(0)  # the cancel lands
            assert jsi._fctask.cancelled(), "nats-py's look still runs: it may send the answers"
            await spy.subscribe(jsi._ccreq.deliver_subject, cb=note_stall)
            seqs: list[int] = []
            while len(seqs) < count and not stalls:
                batch = await reader.next_batch(10)
                assert batch, "the reader went idle before every message arrived"
                seqs += [m.metadata.sequence.stream for m in batch]
            unanswered = jsi._fcr
    finally:
        await spy.close()
    assert held, "no request came while messages were queued: the test tested nothing"
    assert stalls == [], "the server waited for an answer the reader held back"
    assert unanswered is None
    assert seqs == list(range(1, count + 1))


async def test_a_flow_control_answer_waits_until_the_reader_took_what_came_before_it(
    settings: Settings, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a reader is behind (its batch full: its viewers have not taken it), its answer to
    a flow-control request waits, longer than nats-py's 0.25 s look, and the server sends
    nothing more meanwhile; once the reader takes, the answer goes, and every held answer goes
    only once the message the server sent last before its request is in the reader's batch.
    Every message arrives once, in order."""
    names = Names(settings.prefix)
    count = 3000  # 30 MB of 10 kB messages through a 64 kB batch
    await publish(js, [names.job_kind_subject("a", "lines")] * count, size=10_000)
    points = hold_points(monkeypatch)
    answers: list[tuple[int, int]] = []  # (the reader's last message when sent, the point)
    readers: list[OrderedReader] = []
    publish_on = js._nc.publish

    async def noting_answers(subject: str, *args: Any, **kwargs: Any) -> None:
        if subject in points:
            last = readers[0]._last
            answers.append((position(last)[0] if last else 0, points[subject]))
        await publish_on(subject, *args, **kwargs)

    monkeypatch.setattr(js._nc, "publish", noting_answers)
    async with ordered_reader(
        js, names.stream, names.all_subjects, max_buffered_bytes=64 * 1024
    ) as reader:
        readers.append(reader)
        assert reader.sub is not None
        jsi = reader.sub._sub._jsi
        async with asyncio.timeout(30):
            while jsi._fcr is None:  # noqa: ASYNC110 - nats-py's held answer: nothing signals it
                await asyncio.sleep(0.01)
        delivered = (await reader.sub.consumer_info()).delivered.consumer_seq
        await asyncio.sleep(0.6)  # past two of nats-py's looks, had it still one
        held = jsi._fcr
        assert answers == [], "answered while the reader was behind"
        assert held is not None
        assert (await reader.sub.consumer_info()).delivered.consumer_seq == delivered
        batches = await read_all(reader, count)
    assert held in points
    assert answers, "no held answer went out once the reader took"
    assert [(last, point) for last, point in answers if last < point] == []
    assert [seq for batch in batches for seq in batch] == list(range(1, count + 1))


# --- drops while a reader's first consumer is made, and a failing report of a drop


async def test_messages_dropped_while_a_readers_first_consumer_is_made_are_read_again(
    settings: Settings, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py drops messages of a reader whose first consumer's create has not answered yet
    (the server sends the first messages as it makes the consumer, and may do so before its
    reply): the dropped subscription goes at once, the reader still gets every message once,
    in order, and the consumer that create made is deleted as soon as it answered, not left for
    the server's clean-up. Here the create's answer is handed back only after the drop, and
    nothing is delivered to the reader until then. (Before: the reader opened again beside the
    create, took its consumer for the old one's and left the consumer the create made.)"""
    names = Names(settings.prefix)
    # Earlier tests' readers may still have deletes queued in this event loop: none of ours.
    await forget_deletes()
    count = 100  # 10 MB, its first window more than nats-py's 1 MB queue here
    await publish(js, [names.job_kind_subject("a", "lines")] * count, size=100_000)
    small_nats_py_queues(js, monkeypatch)
    dropped, delivering = asyncio.Event(), asyncio.Event()
    lost, on_message = OrderedReader.lost_messages, OrderedReader._on_message

    def noting_the_drop(reader: OrderedReader, why: str) -> None:
        lost(reader, why)
        dropped.set()

    async def once_delivering(reader: OrderedReader, msg: Msg) -> None:
        await delivering.wait()
        await on_message(reader, msg)

    monkeypatch.setattr(OrderedReader, "lost_messages", noting_the_drop)
    monkeypatch.setattr(OrderedReader, "_on_message", once_delivering)
    made: list[str] = []
    add_consumer = js.add_consumer

    def subscribed(deliver: str) -> bool:
        return any(sub.subject == deliver for sub in js._nc._subs.values())

    async def answered_after_a_drop(stream: str, config: Any, **kwargs: Any) -> Any:
        made.append(config.name)
        info = await add_consumer(stream, config, **kwargs)
        if len(made) == 1:  # the first create: the reader opened again makes the next ones
            async with asyncio.timeout(30):
                await dropped.wait()
                while subscribed(config.deliver_subject):  # noqa: ASYNC110 - nothing signals it
                    await asyncio.sleep(0.01)
            delivering.set()
        return info

    monkeypatch.setattr(js, "add_consumer", answered_after_a_drop)
    async with ordered_reader(js, names.stream, names.all_subjects) as reader:
        seqs = await read_until_idle(reader, 3)
        async with asyncio.timeout(10):
            while deletes_pending():  # noqa: ASYNC110 - the reader's deletions: nothing signals them
                await asyncio.sleep(0.05)
        # Asked at once: the server would remove it itself 5 s after its subscription went.
        with pytest.raises(NotFoundError):
            await js.consumer_info(names.stream, made[0])
        assert reader.sub is not None
        assert reader.sub._consumer == made[-1] != made[0]
    assert seqs == list(range(1, count + 1))


async def test_a_failing_report_of_a_drop_leaves_the_connection_reading(
    settings: Settings, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should telling a reader that nats-py dropped its messages fail (the connection's error
    callback, ``eventstore.connect``), the failure is logged and the connection goes on: it
    never reconnects, publishes are acknowledged and another reader on it reads."""
    names = Names(settings.prefix)
    await publish(js, [names.job_kind_subject("a", "lines")] * 30, size=100_000)
    small_nats_py_queues(js, monkeypatch)

    def broken(reader: OrderedReader, why: str) -> None:
        raise RuntimeError("the report failed")

    monkeypatch.setattr(OrderedReader, "lost_messages", broken)
    with capture_logs() as logs:
        async with ordered_reader(
            js, names.stream, names.all_subjects, max_buffered_bytes=64 * 1024
        ):
            async with asyncio.timeout(30):
                while "reader not told of its lost messages" not in [log["event"] for log in logs]:  # noqa: ASYNC110 - a log line: nothing signals it
                    await asyncio.sleep(0.05)
    monkeypatch.undo()
    other = names.job_kind_subject("b", "lines")
    async with asyncio.timeout(30):  # a connection that stopped reading fails here, not hangs
        await publish(js, [other] * 5)
        async with ordered_reader(js, names.stream, [other]) as reader:
            batches = await read_all(reader, 5)
    assert [seq for batch in batches for seq in batch] == list(range(31, 36))
    assert js._nc.stats["reconnects"] == 0
    assert js._nc.is_connected
