"""A job's feed in the API: what it keeps for viewers joining late, how it counts cut ones."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api.fanout import Batch, Fanout, Item, JobFeed, Limits, Subscriber
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
    inboxes = [(feed, (await out.join(feed.job_id))[1]) for feed in feeds[:50] for _ in range(10)]
    assert alone == 0.0
    assert out.coalesce_window() == 0.1
    for feed, inbox in inboxes:
        feed.leave(inbox)
    assert out.coalesce_window() == 0.0
