"""Server-Sent Events: resume points from Last-Event-ID and frames that no text can break."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jobrunner.contracts import events
from jobrunner.contracts.events import ErrorInfo, JobStatus
from jobrunner.services.api.directwrite import http_chunk
from jobrunner.services.api.fanout import Batch, Item
from jobrunner.services.api.sse import (
    MAX_STREAM_SEQ,
    LinePayload,
    ResumePoint,
    _batch_wire,
    _unsent,
    encode_data,
    frame,
    frames_for,
    line_frames,
    short_past,
)

AT = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def test_resume_after_a_whole_event_starts_at_the_next() -> None:
    """Last-Event-ID 41 resumes with stream sequence 42."""
    point = ResumePoint.parse("41")
    assert point == ResumePoint(41)
    assert point.next_seq == 42


def test_leading_zeros_of_a_last_event_id_mean_nothing() -> None:
    """Last-Event-ID 0041:003 resumes as 41:3 does, however many zeros lead."""
    assert ResumePoint.parse("0041:003") == ResumePoint(41, 3)
    assert ResumePoint.parse("0" * 30 + "41") == ResumePoint(41)


def test_resume_mid_batch_reads_that_batch_again() -> None:
    """Last-Event-ID 41:3 reads message 41 again, skipping its lines up to index 3."""
    point = ResumePoint.parse(" 41:3 ")
    assert point == ResumePoint(41, 3)
    assert point.next_seq == 41


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "abc",
        "41:x",
        "-1",
        "41:-2",
        "4 1",
        "1:2:3",
        "+5",
        "1_000",
        "٣",
        "41:+1",
        "0x1f",
        "4\u00a01",
        "41:",
        ":3",
        "9" * 20,
        "9" * 5000,
        "9223372036854775808",
        "1:9223372036854775808",
    ],
)
def test_malformed_last_event_id_starts_from_the_beginning(raw: str | None) -> None:
    """A missing or malformed Last-Event-ID is ignored: the stream starts from its beginning."""
    assert ResumePoint.parse(raw) is None


# Header values as clients send them: any text, and near-misses of an id (digits of every script,
# signs, underscores, spaces, long runs of digits).
NEAR_IDS = st.text(
    st.sampled_from("0123456789:+-_ \t.\u0663\u06f5\u0967") | st.characters(), max_size=40
) | st.integers(0, 10**25).map(str)


def our_id(raw: str) -> tuple[int, int | None] | None:
    """The oracle: an id the server sends, written out by hand (no regex, no int() of text)."""
    text = raw.strip(" \t")
    parts = text.split(":")
    if len(parts) > 2 or not all(p and all(c in "0123456789" for c in p) for p in parts):
        return None
    numbers = [sum(int(c) * 10**i for i, c in enumerate(reversed(p))) for p in parts]
    if any(n > MAX_STREAM_SEQ for n in numbers):
        return None
    return numbers[0], numbers[1] if len(numbers) == 2 else None


@settings(deadline=None, max_examples=500)
@given(NEAR_IDS)
@example("0" * 19 + "5")  # leading zeros beyond 19 digits (the review's case: read as 5)
@example("0" * 5000 + "41:" + "0" * 30 + "3")
@example("0" * 5 + "9" * 19)  # past MAX_STREAM_SEQ once the zeros are left aside
def test_any_last_event_id_is_our_id_or_ignored(raw: str) -> None:
    """Whatever a client sends as Last-Event-ID, it is read as the id it spells in ASCII digits,
    within a stream's sequences, or ignored as a whole (never half read)."""
    expected = our_id(raw)
    point = ResumePoint.parse(raw)
    if expected is None:
        assert point is None
    else:
        assert point == ResumePoint(*expected)


@settings(deadline=None)
@given(st.integers(0, MAX_STREAM_SEQ), st.none() | st.integers(0, 10_000))
def test_ids_sent_are_read_back_as_sent(seq: int, index: int | None) -> None:
    """The id the server sent resumes exactly there."""
    raw = f"{seq}:{index}" if index is not None else str(seq)
    assert ResumePoint.parse(raw) == ResumePoint(seq, index)


def parse_frame(raw: bytes) -> dict[str, str]:
    """A frame as a browser reads it: field lines split on any line break."""
    text = raw.decode()
    assert text.endswith("\n\n")
    fields: dict[str, str] = {}
    for line in text[:-2].splitlines():
        name, _, value = line.partition(": ")
        assert name not in fields, f"field {name} twice in {raw!r}"
        fields[name] = value
    return fields


@settings(deadline=None)
@given(st.text())
def test_no_log_text_can_forge_an_sse_field(text: str) -> None:
    """Whatever a tool prints (line breaks of any kind included), a frame has one data line."""
    fields = parse_frame(frame({"text": text}, event="line", id="7"))
    assert set(fields) == {"id", "event", "data"}
    assert msgspec.json.decode(fields["data"]) == {"text": text}


def test_encode_data_escapes_unicode_line_breaks() -> None:
    """U+0085, U+2028 and U+2029 are sent escaped, since some clients break lines on them."""
    assert encode_data("a\u0085b\u2028c\u2029d") == b'"a\\u0085b\\u2028c\\u2029d"'


def test_each_line_of_a_batch_has_its_own_id() -> None:
    """Lines of one batched message are ids <seq>:0, <seq>:1, ... so a resume can land between."""
    lines = [events.LogLine(i, "stdout", "INFO", AT, f"l{i}") for i in (1, 2, 3)]
    frames = frames_for(events.LineLogged(job_id="j", lines=lines), 41, None)
    assert [parse_frame(f)["id"] for f in frames] == ["41:0", "41:1", "41:2"]


def test_resume_mid_batch_skips_the_lines_already_seen() -> None:
    """After Last-Event-ID 41:1 only the batch's line 41:2 is sent again."""
    lines = [events.LogLine(i, "stdout", "INFO", AT, f"l{i}") for i in (1, 2, 3)]
    frames = frames_for(events.LineLogged(job_id="j", lines=lines), 41, 1)
    assert [parse_frame(f)["id"] for f in frames] == ["41:2"]


def test_terminal_status_is_followed_by_done() -> None:
    """A job's end is sent as a status event with an id, then a done event that closes the view."""
    event = events.StatusChanged(
        job_id="j",
        status=JobStatus.FAILED,
        exit_code=1,
        error=ErrorInfo(code="EXIT_NONZERO", message="exit 1"),
        occurred_at=AT,
    )
    status, done = (parse_frame(f) for f in frames_for(event, 50, None))
    assert (status["event"], status["id"], done["event"]) == ("status", "50", "done")
    assert "id" not in done
    assert msgspec.json.decode(done["data"])["error"] == {
        "code": "EXIT_NONZERO",
        "message": "exit 1",
    }


def test_running_status_is_not_done() -> None:
    """A job that starts running sends one status event and no done."""
    event = events.StatusChanged(job_id="j", status=JobStatus.RUNNING, occurred_at=AT)
    assert [parse_frame(f)["event"] for f in frames_for(event, 5, None)] == ["status"]


def test_progress_and_cancel_request_are_sent_with_their_ids() -> None:
    """Progress and a cancel request reach the viewer as named events with their sequence."""
    progress = frames_for(events.ProgressReported(job_id="j", percent=5.0), 6, None)
    cancel = frames_for(events.CancelRequested(job_id="j", requested_by="bob"), 7, None)
    assert [(parse_frame(f)["event"], parse_frame(f)["id"]) for f in progress + cancel] == [
        ("progress", "6"),
        ("cancel_requested", "7"),
    ]


def test_job_request_sends_nothing() -> None:
    """The request itself is not shown in the live stream."""
    assert frames_for(events.JobRequested(job_id="j", job_type="t"), 1, None) == []


BATCH_TEXTS = st.lists(
    st.text() | st.sampled_from(['},{"seq":1', '"}', "\\", "\u2028", '},{"seq":', "{}"]),
    max_size=20,
)


@settings(deadline=None)
@given(BATCH_TEXTS, st.sampled_from(["stdout", "stderr", '"},{"seq":']))
def test_a_batch_is_framed_as_each_line_alone_would_be(texts: list[str], stream: str) -> None:
    """A batch's frames (encoded at once) are, line for line, the frame of each line alone."""
    lines = [events.LogLine(i, stream, "INFO", AT, t) for i, t in enumerate(texts, 1)]
    frames = frames_for(events.LineLogged(job_id="j", lines=lines), 41, None)
    assert frames == [
        frame(
            {
                "seq": ln.seq,
                "stream": ln.stream,
                "level": ln.level,
                "timestamp": AT,
                "text": ln.text,
            },
            id=f"41:{i}",
        )
        for i, ln in enumerate(lines)
    ]


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(
        st.text(alphabet=st.sampled_from('ab \n"\\\u0085\u2028\u2029é€\x00\x1b')), max_size=8
    ),
    seq=st.integers(1, 2**40),
)
def test_a_batch_of_lines_frames_exactly_as_one_line_at_a_time(texts: list[str], seq: int) -> None:
    """The frames of a line batch are byte for byte those of each line encoded on its own."""
    lines = [events.LogLine(n + 1, "stdout", "INFO", AT, text) for n, text in enumerate(texts)]
    one_by_one = [
        b"id: %d:%d\ndata: %b\n\n"
        % (seq, i, encode_data(LinePayload(ln.seq, ln.stream, ln.level, ln.timestamp, ln.text)))
        for i, ln in enumerate(lines)
    ]
    assert line_frames(events.LineLogged(job_id="j", lines=lines), seq) == one_by_one


def test_a_batch_framed_in_slices_is_the_batch_framed_at_once() -> None:
    """The feed frames a flood's message a slice per loop step: the same frames, ids included."""
    lines = [events.LogLine(n, "stdout", "INFO", AT, f"line {n}") for n in range(1, 1001)]
    event = events.LineLogged(job_id="j", lines=lines)
    slices = [line_frames(event, 7, first, first + 250) for first in range(0, 1000, 250)]
    assert [frame for piece in slices for frame in piece] == line_frames(event, 7)
    assert slices[1][0].startswith(b"id: 7:250\n")


def test_only_a_past_that_fits_half_a_client_buffer_is_sent_by_the_feed() -> None:
    """A job just started is sent from its feed; a past that could overflow a client at the
    feed's pace is read at the client's pace instead (every line counted at its largest)."""
    client_bytes = 8 * 1024 * 1024
    assert short_past(0, 65536, client_bytes)
    assert short_past(1, 65536, client_bytes)
    assert not short_past(11, 65536, client_bytes)
    assert short_past(11, 1024, client_bytes)
    assert not short_past(1, 65536, 256 * 1024)


def batch_of(shape: list[tuple[int, int]]) -> Batch:
    """A live batch: per item, the gap before its sequence and its number of lines (0: a
    RUNNING status, which has no lines)."""
    items = []
    seq = 0
    for gap, lines in shape:
        seq += gap
        event: events.AnyEvent
        if lines:
            logged = [
                events.LogLine(seq * 10 + n, "stdout", "INFO", AT, f"l{n}") for n in range(lines)
            ]
            event = events.LineLogged(job_id="j", lines=logged)
        else:
            event = events.StatusChanged(job_id="j", status=JobStatus.RUNNING, occurred_at=AT)
        items.append(Item(seq, event, frames_for(event, seq, None)))
    return Batch(items)


@settings(max_examples=500, deadline=None)
@given(
    shape=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 4)), min_size=1, max_size=5),
    sent=st.integers(0, 16),
    skip=st.none() | st.integers(0, 4),
    skip_seq=st.none() | st.integers(0, 16),
    framed_for_another_client=st.booleans(),
)
def test_a_client_written_to_straight_is_sent_exactly_what_it_has_not_seen(
    shape: list[tuple[int, int]],
    sent: int,
    skip: int | None,
    skip_seq: int | None,
    framed_for_another_client: bool,
) -> None:
    """A viewer handed a batch directly gets the batch's events after the last one it was sent,
    less the lines it already had of the message it resumed inside (Last-Event-ID 41:3) — the
    same bytes as its stream's own path would send — whether or not the feed already framed
    the batch for a viewer that had seen none of it."""
    batch = batch_of(shape)
    if framed_for_another_client:
        _batch_wire(batch, 0, None, None)
    parts, last, _ = _unsent(batch.items, sent, skip, skip_seq)
    body = b"".join(parts)
    assert _batch_wire(batch, sent, skip, skip_seq) == ((http_chunk(body) if body else b""), last)
