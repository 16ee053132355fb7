"""A job's feed in the API: what it keeps for viewers joining late, how it counts cut ones."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.services.api import fanout as fanout_module
from jobrunner.services.api import sse
from jobrunner.services.api.fanout import (
    COALESCE_PER_CLIENT,
    HAND_OVER_BYTES,
    PAUSE_BYTES,
    TAKE_BYTES,
    Batch,
    Fanout,
    HistoryTurn,
    Item,
    JobFeed,
    Limits,
    Subscriber,
)
from jobrunner.services.api.sse import frames_for

AT = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def fanout(client_bytes: int = 1 << 20, record_bytes: int = 1 << 20) -> Fanout:
    limits = Limits(
        keepalive=1.0,
        client_bytes=client_bytes,
        total_bytes=64 << 20,
        history_idle=1.0,
        record_bytes=record_bytes,
    )
    js: Any = None  # nothing here reads JetStream
    return Fanout(js, Names("t"), frames_for, limits)


def line_item(seq: int, text: str = "x") -> Item:
    line = events.LogLine(seq, "stdout", "INFO", AT, text)
    event = events.LineLogged(job_id="j", lines=[line])
    return Item(seq, event, frames_for(event, seq, None))


def done_item(seq: int) -> Item:
    event = events.StatusChanged(job_id="j", status=events.JobStatus.COMPLETED, exit_code=0)
    return Item(seq, event, frames_for(event, seq, None))


def cut_count(reason: str) -> float:
    return REGISTRY.get_sample_value("jobrunner_sse_streams_cut_total", {"reason": reason}) or 0.0


def test_a_client_cut_for_its_backlog_counts_in_the_metrics() -> None:
    """A viewer too slow for its buffer shows in jobrunner_sse_streams_cut_total."""
    out = fanout(client_bytes=100)
    feed = JobFeed(out, "j")
    slow = Subscriber(out)
    feed.subscribers.add(slow)
    before = cut_count("client_backlog")
    out.hand_over(feed.subscribers, Batch([line_item(1, "y" * 200)]))
    assert slow.overflow
    assert cut_count("client_backlog") == before + 1


def hand_over_count(name: str) -> float:
    return REGISTRY.get_sample_value(f"jobrunner_sse_{name}_total") or 0.0


def test_each_hand_over_and_each_viewer_handed_it_count_in_the_metrics() -> None:
    """jobrunner_sse_hand_overs_total counts a feed's batches, and
    jobrunner_sse_client_deliveries_total the viewers handed each, a cut one not among them."""
    out = fanout(client_bytes=300)
    feed = JobFeed(out, "j")
    viewers = [Subscriber(out) for _ in range(3)]
    feed.subscribers.update(viewers)
    viewers[0].cut()
    before = hand_over_count("hand_overs"), hand_over_count("client_deliveries")
    out.hand_over(feed.subscribers, Batch([line_item(1)]))
    out.hand_over(feed.subscribers, Batch([line_item(2)]))
    assert hand_over_count("hand_overs") == before[0] + 2
    assert hand_over_count("client_deliveries") == before[1] + 4


def test_a_viewer_cut_for_its_backlog_at_a_hand_over_is_not_counted_as_handed_it() -> None:
    """A viewer whose backlog would pass its limit with this batch is cut, not handed it:
    jobrunner_sse_client_deliveries_total counts only the viewers that got the batch."""
    out = fanout(client_bytes=300)
    feed = JobFeed(out, "j")
    slow, keeping_up = Subscriber(out), Subscriber(out)
    feed.subscribers.update([slow, keeping_up])
    out.hand_over(feed.subscribers, Batch([line_item(1, "y" * 100)]))
    keeping_up.take()  # the other viewer's task has taken its backlog; the slow one has not
    before = hand_over_count("client_deliveries")
    out.hand_over(feed.subscribers, Batch([line_item(2, "y" * 100)]))
    assert slow.overflow
    assert not keeping_up.overflow
    assert hand_over_count("client_deliveries") == before + 1


def test_a_client_joining_inside_the_record_gets_every_event_since_its_start() -> None:
    """A viewer arriving after the feed started gets the events since its start from memory."""
    feed = JobFeed(fanout(), "j", start_seq=5)
    feed.record_from = 5
    for seq in range(5, 11):
        feed._remember(line_item(seq))
    recorded = feed.recorded_since(7)
    assert recorded is not None
    assert [item.seq for item in recorded] == [7, 8, 9, 10]


def test_a_client_starting_before_the_record_reads_its_history() -> None:
    """A viewer whose start lies before the feed's start is not served from the record."""
    feed = JobFeed(fanout(), "j", start_seq=5)
    feed.record_from = 5
    feed._remember(line_item(5))
    assert feed.recorded_since(4) is None


def test_a_record_grown_past_its_limit_is_dropped_for_good() -> None:
    """A feed that handed on more than its record may hold keeps none, and frees its bytes."""
    out = fanout(record_bytes=300)
    feed = JobFeed(out, "j", start_seq=1)
    feed.record_from = 1
    for seq in range(1, 20):
        feed._remember(line_item(seq))
    assert feed.recorded_since(1) is None
    assert out.recorded_bytes == 0


@settings(deadline=None, max_examples=200)
@given(
    seqs=st.lists(st.integers(1, 5), max_size=40).map(
        lambda steps: [sum(steps[: i + 1]) for i in range(len(steps))]
    ),
    record_from=st.integers(0, 3),
    start=st.integers(0, 120),
    record_bytes=st.integers(0, 4000),
)
def test_the_record_is_exactly_the_events_since_a_start_or_nothing(
    seqs: list[int], record_from: int, start: int, record_bytes: int
) -> None:
    """From memory a client gets what a history read from its start would give, or nothing."""
    out = fanout(record_bytes=record_bytes)
    feed = JobFeed(out, "j", start_seq=record_from)
    feed.record_from = record_from
    handed_on = [line_item(seq, "z" * (seq % 7)) for seq in seqs]
    for item in handed_on:
        feed._remember(item)
    fits = sum(len(item.chunk) for item in handed_on) <= record_bytes
    recorded = feed.recorded_since(start)
    if not fits or start < record_from:
        assert recorded is None
    else:
        assert recorded == [item for item in handed_on if item.seq >= start]
    assert out.recorded_bytes == feed.record_size
    feed.drop_record()
    assert out.recorded_bytes == 0


async def test_the_batching_window_counts_the_clients_of_every_job() -> None:
    """Ten viewers on each of many jobs are batched like as many viewers on one job."""
    out = fanout()
    feeds = [JobFeed(out, f"j{n}") for n in range(100)]
    for feed in feeds:
        feed.ready.set()
        out.feeds[feed.job_id] = feed
    alone = out.coalesce_window()
    inboxes = [(feed, (await out.join(feed.job_id))[1]) for feed in feeds for _ in range(10)]
    assert alone == 0.0
    assert out.coalesce_window() == pytest.approx(1000 * COALESCE_PER_CLIENT)
    for feed, inbox in inboxes:
        feed.leave(inbox)
    assert out.coalesce_window() == 0.0


async def test_the_batching_window_hands_over_at_once_then_at_most_once_per_window() -> None:
    """With many viewers in the process, the first event after a quiet spell goes to the clients
    at once; what follows within the window goes together when the window ends, and the next
    event a whole window later goes at once again (a busy runner's messages come a window apart:
    held a whole window each, every one of them was a window late)."""
    out = fanout()
    out.clients = 1000
    window = out.coalesce_window()
    assert window == pytest.approx(0.05)
    feed = JobFeed(out, "j")
    inbox = Subscriber(out)
    feed.subscribers.add(inbox)
    inbox.room = feed.room
    loop = asyncio.get_running_loop()

    def handed_over() -> list[list[int]]:
        return [[item.seq for item in batch.items] for batch in inbox.batches]

    # Waits for the hand-over itself, not for a time: under load a sleep of half a window can
    # end after the window's timer ran (a "still held" check after it failed once at load 14).
    # The window's end is a lower bound only (a timer never runs early), true however late.
    opened = loop.time()  # (before the hand-over: the window opens no earlier)
    await feed._deliver([stored(1, "a")])
    assert handed_over() == [[1]]  # at once
    inbox.take()  # as the client's task does; the inbox is empty again
    await feed._deliver([stored(2, "b")])
    await feed._deliver([stored(3, "c")])
    assert not inbox.has_items or loop.time() - opened >= window  # held while the window is open
    await asyncio.wait_for(inbox.wakeup.wait(), 30)
    assert loop.time() - opened >= window  # not before the window ended
    assert handed_over() == [[2, 3]]  # the two held events in one hand-over
    inbox.take()
    await asyncio.sleep(window * 1.2)  # a quiet spell longer than the window (longer is fine)
    await feed._deliver([stored(4, "d")])
    assert handed_over() == [[4]]  # at once again


def test_a_bounded_take_hands_out_whole_batches_and_keeps_the_rest_counted() -> None:
    """An inbox taken a piece at a time: the oldest whole batches, the rest still its backlog."""
    out = fanout()
    feed = JobFeed(out, "j")
    inbox = Subscriber(out)
    feed.subscribers.add(inbox)
    batches = [Batch([line_item(seq, "y" * 100)]) for seq in range(1, 6)]
    for batch in batches:
        out.hand_over(feed.subscribers, batch)
    size = batches[0].size
    assert [item.seq for item in inbox.take(2 * size + 1)] == [1, 2]
    assert inbox.bytes == out.buffered_bytes == 3 * size
    assert inbox.has_items
    assert inbox.wakeup.is_set()
    assert [item.seq for item in inbox.take(1)] == [3]  # at least one batch, however small
    assert [item.seq for item in inbox.take()] == [4, 5]
    assert inbox.bytes == out.buffered_bytes == 0
    assert not inbox.wakeup.is_set()


async def test_a_viewers_backlog_goes_out_in_pieces_with_the_other_streams_between() -> None:
    """A flood's viewer megabytes behind does not hold the loop until all of it is written: a
    quiet job's line goes out between its pieces, and each stream still gets every event once."""
    out = fanout(client_bytes=64 << 20)
    for job_id in ("flood", "quiet"):
        feed = JobFeed(out, job_id)
        feed.ready.set()
        out.feeds[job_id] = feed
    written: list[tuple[str, bytes]] = []

    async def viewer(job_id: str) -> None:
        # Like a socket that takes every write at once: nothing here gives the loop back.
        async for chunk in sse.job_stream(1000, out, job_id, 1, None, None):
            written.append((job_id, chunk))

    flood = asyncio.create_task(viewer("flood"))
    quiet = asyncio.create_task(viewer("quiet"))
    await asyncio.sleep(0)  # both joined, waiting for their first events
    lines = [line_item(seq, "f" * 100_000) for seq in range(1, 21)]
    for item in lines:
        out.hand_over(out.feeds["flood"].subscribers, Batch([item]))
    out.hand_over(out.feeds["flood"].subscribers, Batch([done_item(21)]))
    out.hand_over(out.feeds["quiet"].subscribers, Batch([line_item(1, "q"), done_item(2)]))
    await asyncio.gather(flood, quiet)
    flood_chunks = [chunk for job_id, chunk in written if job_id == "flood"][1:]  # after retry
    assert all(len(chunk) <= TAKE_BYTES + len(lines[0].chunk) for chunk in flood_chunks)
    assert b"".join(flood_chunks).count(b"data: ") == 21 + 1  # every line, status and done
    quiet_at = next(i for i, (job_id, chunk) in enumerate(written) if b'"q"' in chunk)
    last_flood_at = max(i for i, (job_id, _) in enumerate(written) if job_id == "flood")
    assert quiet_at < last_flood_at


def stored(seq: int, text: str) -> Msg:
    """A message as JetStream delivers it (its stream sequence in the reply subject)."""
    event = events.LineLogged(job_id="j", lines=[events.LogLine(seq, "stdout", "INFO", AT, text)])
    client: Any = None  # never acknowledged: the feed's consumer does not ack
    return Msg(client, "t.j.lines", f"$JS.ACK.t.c.1.{seq}.{seq}.0.0", codec.encode(event))


async def test_a_feed_reads_no_further_while_its_only_client_is_behind() -> None:
    """Backpressure: a flood's viewer reading slower than the flood is not handed the flood's
    whole rate until cut; the feed waits for it, then goes on, every event once and in order."""
    out = fanout(client_bytes=64 << 20)
    feed = JobFeed(out, "j")
    inbox = Subscriber(out)
    feed.subscribers.add(inbox)
    inbox.room = feed.room
    msgs = [stored(seq, "f" * 100_000) for seq in range(1, 41)]  # about 4 MB
    deliver = asyncio.create_task(feed._deliver(msgs))
    await asyncio.sleep(0.2)
    assert not deliver.done()
    assert PAUSE_BYTES <= inbox.bytes < PAUSE_BYTES + HAND_OVER_BYTES + 200_000
    received = []
    while not deliver.done() or inbox.has_items:
        received += inbox.take()
        await asyncio.sleep(0.01)
    assert [item.seq for item in received] == list(range(1, 41))
    assert not inbox.overflow


async def test_a_client_that_stopped_reading_is_still_cut_by_its_limit() -> None:
    """A pause lasts at most the idle limit: a viewer that reads nothing is cut as before, and
    the feed goes on for the others instead of waiting for it forever."""
    out = fanout(client_bytes=1 << 20)  # history_idle: 1 s
    feed = JobFeed(out, "j")
    inbox = Subscriber(out)
    feed.subscribers.add(inbox)
    inbox.room = feed.room
    deliver = asyncio.create_task(
        feed._deliver([stored(seq, "f" * 100_000) for seq in range(1, 31)])
    )
    async with asyncio.timeout(10):
        while not inbox.overflow:
            inbox.wakeup.clear()  # (no stream here: the test waits in its place)
            await inbox.wakeup.wait()
    # A cut client reads nothing: the feed waits for its stream to end, as it does on a cut.
    feed.leave(inbox)
    assert await asyncio.wait_for(deliver, 10) is False


async def test_a_feed_whose_clients_all_wait_for_a_turn_reads_nothing_for_nobody() -> None:
    """Before: a feed whose every client waited in line for a history read (handed nothing)
    read and framed a flood for nobody. Now it pauses, longer than a pause's timeout (nobody is
    there to cut), until a client reads, and then goes on: every event once, in order."""
    out = fanout(client_bytes=64 << 20)  # history_idle: 1 s
    feed = JobFeed(out, "j")
    inbox = Subscriber(out)
    feed.subscribers.add(inbox)
    inbox.room = feed.room
    inbox.on_hold = True
    deliver = asyncio.create_task(
        feed._deliver([stored(seq, "f" * 100_000) for seq in range(1, 41)])
    )
    await asyncio.sleep(1.5)  # longer than history_idle
    assert not deliver.done()
    assert feed.last_seq <= 5  # one piece read, the rest still in NATS
    inbox.reads_live()
    received = []
    while not deliver.done() or inbox.has_items:
        received += inbox.take()
        await asyncio.sleep(0.01)
    assert [item.seq for item in received] == list(range(1, 41))


async def test_viewers_joining_to_wait_for_a_turn_do_not_keep_a_stuck_client_from_its_cut() -> None:
    """Before: each join woke the feed paused for a client that stopped reading, restarting the
    pause's timeout: viewers joining to wait for a turn more often than history_idle kept the
    stuck client, and the feed, waiting. A join that waits for its turn wakes nothing now."""
    out = fanout(client_bytes=1 << 20)  # history_idle: 1 s
    feed = JobFeed(out, "j")
    feed.ready.set()
    out.feeds["j"] = feed
    _, stuck, _ = await out.join("j")
    deliver = asyncio.create_task(
        feed._deliver([stored(seq, "f" * 100_000) for seq in range(1, 31)])
    )
    async with asyncio.timeout(5):
        while not stuck.overflow:
            _, waiting, _ = await out.join("j")
            waiting.on_hold = True  # in the same step, as ``sse.job_stream`` does
            await asyncio.sleep(0.3)
    # Nobody reads now (the stuck client is cut, the others wait for a turn): the feed pauses.
    await asyncio.sleep(0.1)
    assert not deliver.done()
    deliver.cancel()


def largest_line_message(seq: int) -> Msg:
    """A runner's largest LineLogged: 1,000 lines of 460 bytes, about 566 KiB of SSE frames."""
    lines = [events.LogLine(n, "stdout", "INFO", AT, "x" * 460) for n in range(1000)]
    event = events.LineLogged(job_id="j", lines=lines)
    client: Any = None
    return Msg(client, "t.j.lines", f"$JS.ACK.t.c.1.{seq}.{seq}.0.0", codec.encode(event))


async def test_a_batch_held_by_the_window_and_the_next_piece_do_not_cut_a_client_that_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With many viewers in the process the batching window holds a piece back; the next
    piece then goes after it, not with it, when the two would not fit the smallest inbox."""
    # A window longer than a loaded machine leaves the test between two deliveries (at the
    # 25 ms of 500 clients, the second delivery sometimes came after the window had closed).
    monkeypatch.setattr(fanout_module, "COALESCE_MAX", 0.5)
    out = fanout(client_bytes=1 << 20)
    out.clients = 100_000  # the longest batching window
    feed = JobFeed(out, "j")
    inbox = Subscriber(out)
    feed.subscribers.add(inbox)
    inbox.room = feed.room

    async def reads() -> None:
        while True:
            await asyncio.sleep(0.01)
            if inbox.has_items:
                inbox.take(64 * 1024)

    reader = asyncio.create_task(reads())
    try:
        await feed._deliver([largest_line_message(1)])  # handed over at once: the window opens
        await feed._deliver([largest_line_message(2)])
        assert feed._pending_bytes > 0  # held for the window
        await feed._deliver([largest_line_message(3), largest_line_message(4)])
    finally:
        reader.cancel()
    assert not inbox.overflow
    assert out.clients_cut == 0


async def test_a_feed_whose_clients_are_cut_or_waiting_reads_nothing_for_nobody() -> None:
    """A cut client whose stream has not left yet reads nothing either: beside viewers waiting
    for a turn, the feed pauses rather than reading the flood for no one."""
    out = fanout(client_bytes=64 << 20)  # history_idle 1 s
    feed = JobFeed(out, "j")
    cut, waiting = Subscriber(out), Subscriber(out)
    for subscriber in (cut, waiting):
        feed.subscribers.add(subscriber)
        subscriber.room = feed.room
    waiting.on_hold = True
    cut.cut()
    deliver = asyncio.create_task(
        feed._deliver([stored(seq, "f" * 100_000) for seq in range(1, 41)])
    )
    await asyncio.sleep(1.5)  # past history_idle: a timed pause would have gone on by now
    assert feed.last_seq <= 5
    assert not deliver.done()
    waiting.reads_live()  # its turn came
    assert await deliver is False
    assert feed.last_seq == 40


async def test_the_feeds_keep_alive_skips_a_client_waiting_for_its_turn() -> None:
    """Before: the feed's keep-alive marked a client in line idle too, so its stream sent one
    more keep-alive after its history (it sends its own while it waits)."""
    out = fanout()
    feed = JobFeed(out, "j")
    waiting, live = Subscriber(out), Subscriber(out)
    waiting.on_hold = True
    feed.subscribers |= {waiting, live}
    await feed._deliver([])
    assert live.idle
    assert not waiting.idle
    assert not waiting.wakeup.is_set()


async def test_a_turn_given_back_is_not_taken_again() -> None:
    """Before: ``taken`` after ``give_back`` answered True for a place no longer held."""
    places = asyncio.Semaphore(1)
    turn = HistoryTurn(places, idle=1.0)
    assert await turn.taken()
    turn.give_back()
    assert not await turn.taken()
    assert not turn.held
    assert not places.locked()  # the place went back, once


async def test_a_client_gone_while_its_feed_starts_leaves_no_feed_running() -> None:
    """A viewer whose request goes away before the job's feed is ready does not leave the feed
    reading the job, with no one to hand its lines to, until the job ends."""
    out = fanout()
    feed = JobFeed(out, "j")
    feed.task = asyncio.create_task(asyncio.sleep(3600))  # a feed still subscribing
    out.feeds["j"] = feed
    joining = asyncio.create_task(out.join("j"))
    await asyncio.sleep(0)
    joining.cancel()
    await asyncio.gather(joining, return_exceptions=True)
    await asyncio.sleep(0)
    assert feed.ended
    assert feed.task.cancelled()
    assert "j" not in out.feeds


async def test_a_feed_starting_for_two_clients_goes_on_when_one_of_them_leaves() -> None:
    """The other viewer still waiting for the feed gets it once it is ready."""
    out = fanout()
    feed = JobFeed(out, "j")
    feed.task = asyncio.create_task(asyncio.sleep(3600))
    out.feeds["j"] = feed
    gone = asyncio.create_task(out.join("j"))
    staying = asyncio.create_task(out.join("j"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert not feed.ended
    feed.ready.set()
    joined, subscriber, _ = await staying
    assert joined is feed
    assert subscriber in feed.subscribers
    feed.leave(subscriber)
    await asyncio.sleep(0)
    assert feed.task.cancelled()
