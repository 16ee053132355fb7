"""The feed's decoding of a socket read: every message ends as the changes ``codec.decode``,
the time check and ``project`` give it, whatever the stream holds."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.common.loglevels import LEVELS, STREAMS, Level, Stream
from jobrunner.contracts import codec, events
from jobrunner.services.projector import nulfree
from jobrunner.services.projector.feed import NO_TIME, EventFeed
from jobrunner.services.projector.projections import Change, LinesAppended, Unreadable, project

AT = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
EVENTS: list[events.Event] = [
    events.JobRequested(job_id="j1", job_type="scraper", parameters={"plz": "10"}, lock="s"),
    events.StatusChanged(job_id="j1", status=events.JobStatus.RUNNING),
    events.LineLogged(job_id="j1", lines=[events.LogLine(1, "stdout", "INFO", AT, "hi\x00")]),
    events.ProgressReported(job_id="j1", current=4, total=8, percent=50.0),
    events.CancelRequested(job_id="j1", requested_by="alice"),
]
TAGS = [*(t.__struct_config__.tag for t in events.EVENT_TYPES), "SomethingNewer"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def _edited(event: events.Event, drop: list[str], extra: dict[str, Any]) -> bytes:
    body = msgspec.json.decode(codec.encode(event))
    for key in drop:
        body.pop(key, None)
    body.update(extra)
    return msgspec.json.encode(body)


# Strings with and without NUL in every field the projection cleans (storable.text).
TEXT = st.text(alphabet=st.sampled_from("a\x00\\u0\u2400"), max_size=6)
LINES = st.builds(
    events.LineLogged,
    job_id=TEXT,
    occurred_at=st.just(AT),
    lines=st.lists(
        st.builds(events.LogLine, st.integers(1, 9), TEXT, TEXT, st.just(AT), TEXT), max_size=3
    ),
)
REQUESTS = st.builds(
    events.JobRequested,
    job_id=TEXT,
    occurred_at=st.just(AT),
    job_type=TEXT,
    parameters=st.dictionaries(TEXT, JSON | TEXT | st.lists(TEXT, max_size=2), max_size=3),
    lock=st.none() | TEXT,
    requested_by=st.none() | TEXT,
    batch_id=st.none() | TEXT,
    attempt_of=st.none() | TEXT,
)
STATUSES = st.builds(
    events.StatusChanged,
    job_id=TEXT,
    occurred_at=st.just(AT),
    status=st.sampled_from(events.JobStatus),
    exit_code=st.none() | st.integers(),
    error=st.none() | st.builds(events.ErrorInfo, code=TEXT, message=TEXT),
    runner_id=st.none() | TEXT,
    cancelled_by=st.none() | TEXT,
    result=st.none() | st.dictionaries(TEXT, JSON | TEXT, max_size=3),
)
PROGRESS = st.builds(
    events.ProgressReported,
    job_id=TEXT,
    occurred_at=st.just(AT),
    current=st.none() | st.integers(0, 2**40),
    total=st.none() | st.integers(0, 2**40),
    percent=st.none() | st.floats(0.0, 100.0),
    phase=st.none() | TEXT,
    message=st.none() | TEXT,
)
CANCELS = st.builds(
    events.CancelRequested,
    job_id=TEXT,
    occurred_at=st.just(AT),
    requested_by=st.none() | TEXT,
    reason=st.none() | TEXT,
)
WEBHOOKS = st.builds(
    events.WebhookAttempted,
    job_id=TEXT,
    occurred_at=st.just(AT),
    delivery_id=TEXT,
    webhook_index=st.integers(0, 9),
    url=TEXT,
    attempt=st.integers(1, 9),
    outcome=st.sampled_from(events.WebhookOutcome),
    status_code=st.none() | st.integers(-(2**40), 2**40),
    error=st.none() | st.builds(events.ErrorInfo, code=TEXT, message=TEXT),
    duration_ms=st.none() | st.floats(0.0, 1e6),
)
# Lines as the wire may hold them beyond what jobrunner writes: a contract's LogLine takes
# trailing items past its five, the NUL-free decoding's tuple does not.
WIRE_LINES = st.lists(
    st.tuples(st.integers(1, 9), TEXT, TEXT, st.just("2026-01-31T12:00:00Z"), TEXT).map(list)
    | st.lists(JSON, max_size=7),
    max_size=3,
)


def _with_lines(job_id: str, lines: list[Any]) -> bytes:
    return msgspec.json.encode(
        {
            "type": "LineLogged",
            "job_id": job_id,
            "occurred_at": "2026-01-31T12:00:00Z",
            "lines": lines,
        }
    )


MESSAGES = st.one_of(
    st.sampled_from(EVENTS).map(codec.encode),
    LINES.map(codec.encode),
    REQUESTS.map(codec.encode),
    STATUSES.map(codec.encode),
    PROGRESS.map(codec.encode),
    CANCELS.map(codec.encode),
    WEBHOOKS.map(codec.encode),
    st.builds(_with_lines, TEXT, WIRE_LINES),
    st.builds(
        _edited,
        st.sampled_from(EVENTS),
        st.lists(st.sampled_from(["occurred_at", "job_id", "status", "lines", "type"])),
        st.dictionaries(
            st.sampled_from(["type", "occurred_at", "job_id", "x"]), JSON | st.sampled_from(TAGS)
        ),
    ),
    st.binary(max_size=40),
    JSON.map(msgspec.json.encode),
)


def _as_before(seq: int, data: bytes) -> list[Change]:
    """The feed's changes for one message as written before the loop was inlined."""
    try:
        event = codec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return [Unreadable(f"{type(exc).__name__}: {exc}")]
    if event and not events.names_its_time(event):
        return [Unreadable(NO_TIME)]
    return project(event, seq) if event else []


class _OneRead:
    """A stream reader that hands the feed one read, then has it stop."""

    closed = False

    def __init__(self, feed: EventFeed, messages: list[tuple[int, bytes]]) -> None:
        self._feed = feed
        self._messages = messages

    async def batches(self) -> AsyncIterator[list[tuple[int, bytes]]]:
        yield self._messages
        self._feed._stop.set()


async def _fed(messages: list[tuple[int, bytes]]) -> list[tuple[int, list[Change]]]:
    feed = EventFeed.__new__(EventFeed)  # no NATS: only the decoding loop is asked
    feed._restart_attempts = 0
    feed._queue = asyncio.Queue()
    feed._stop = asyncio.Event()
    feed._decoding = asyncio.Event()
    feed._decoding.set()
    feed._reader = _OneRead(feed, messages)  # type: ignore[assignment]
    await feed._read()
    return feed._queue.get_nowait()


@settings(deadline=None, max_examples=300)
@given(st.lists(MESSAGES, min_size=1, max_size=6))
def test_every_message_of_a_read_ends_as_the_codec_and_projection_say(
    bodies: list[bytes],
) -> None:
    """Events, unknown types, events without their time, bad JSON and random bytes in one read:
    each gives the rows, the skip or the set-aside reason it always gave, in order."""
    messages = [(seq, data) for seq, data in enumerate(bodies, start=1)]
    assert asyncio.run(_fed(messages)) == [(seq, _as_before(seq, data)) for seq, data in messages]


def test_a_message_without_nul_is_decoded_into_the_nul_free_types() -> None:
    """The usual message (no NUL in it) takes the path whose projections skip the NUL checks,
    and gives the rows the contract's path gives."""
    messages = [(seq, codec.encode(event)) for seq, event in enumerate(EVENTS, start=1)]
    clean = [(seq, data) for seq, data in messages if b"\\u0000" not in data]
    assert len(clean) == len(EVENTS) - 1  # the line with NUL goes the contract's way
    decoded = {type(nulfree.decode(data)) for _, data in clean}
    assert {
        nulfree.NulFreeJobRequested,
        nulfree.NulFreeStatusChanged,
        nulfree.NulFreeProgressReported,
        nulfree.NulFreeCancelRequested,
    } <= decoded
    attempt = events.WebhookAttempted(
        job_id="j1",
        delivery_id="d1",
        url="https://example.com/h",
        outcome=events.WebhookOutcome.DELIVERED,
    )
    assert type(nulfree.decode(codec.encode(attempt))) is nulfree.NulFreeWebhookAttempted
    line = codec.encode(
        events.LineLogged(job_id="j1", lines=[events.LogLine(1, "stdout", "INFO", AT, "hi")])
    )
    assert type(nulfree.decode(line)) is nulfree.NulFreeLineLogged
    assert asyncio.run(_fed([*clean, (9, line)])) == [
        (seq, _as_before(seq, data)) for seq, data in [*clean, (9, line)]
    ]


def test_every_event_type_has_its_nul_free_decoding() -> None:
    """A new event type in the contract is decoded on the NUL-free path too (or it would be
    decoded twice, first refused there, for every message of its type)."""
    tags = {kind.__struct_config__.tag for kind in typing.get_args(nulfree.NulFreeEvent)}
    assert tags == {kind.__struct_config__.tag for kind in events.EVENT_TYPES}


def test_a_nul_is_found_by_its_backslash_then_by_its_six_bytes() -> None:
    """A line without escapes, one with escapes but no NUL, one with a NUL (``\\u0000`` in
    JSON) and one whose text holds a backslash before ``u0000`` (no NUL) each give the rows the
    contract's decoding gives: the NUL cleaned, every other text as written."""
    texts = ["plain", 'a "quoted"\ttab\nline', "a NUL \x00 here", "not a NUL: \\u0000"]
    messages = [
        (
            seq,
            codec.encode(
                events.LineLogged(job_id="j", lines=[events.LogLine(1, "stdout", "INFO", AT, text)])
            ),
        )
        for seq, text in enumerate(texts, start=1)
    ]
    fed = asyncio.run(_fed(messages))
    assert fed == [(seq, _as_before(seq, data)) for seq, data in messages]
    rows = [change.rows[0] for _, [change] in fed]  # type: ignore[attr-defined]
    assert [row[4] for row in rows] == [*texts[:2], "a NUL \u2400 here", texts[3]]


@pytest.mark.parametrize(("stream", "level"), [("console", "INFO"), ("stdout", "TRACE")])
def test_a_line_of_a_stream_or_level_the_runner_never_writes_is_stored_as_written(
    stream: str, level: str
) -> None:
    """A foreign publisher's line with another stream or level than the runner's is stored
    with them as written, as any other line (the contract takes any string there)."""
    line = codec.encode(
        events.LineLogged(job_id="j1", lines=[events.LogLine(1, stream, level, AT, "hi")])
    )
    ((_, changes),) = asyncio.run(_fed([(5, line)]))
    assert changes == _as_before(5, line)
    (appended,) = changes
    assert isinstance(appended, LinesAppended)
    assert appended.rows[0][1:3] == (stream, level)


def test_the_nul_free_lines_take_exactly_the_runners_streams_and_levels() -> None:
    """Every stream and level the runner and external jobs' reports write takes the NUL-free
    path (none decoded twice), and the NUL-free lines take no other."""
    _, stream_type, level_type, _, _ = typing.get_args(nulfree.LineFields)
    assert stream_type == Stream
    assert level_type == Level
    for stream in STREAMS:
        for level in LEVELS:
            line = events.LogLine(1, stream, level, AT, "hi")
            data = codec.encode(events.LineLogged(job_id="j1", lines=[line]))
            assert type(nulfree.decode(data)) is nulfree.NulFreeLineLogged
