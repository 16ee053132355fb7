"""The stream reader's frame parser (common/streamreader.py): whatever mix of frames arrives, cut
into reads anywhere, every stored message comes out once, in order, with its payload, and every
flow-control request and PING is answered. The usual delivery takes a fast path (one regular
expression); v2 reply subjects, messages without headers and control frames take the general
one: both are generated here, so the two paths are held to the same result."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.common import streamreader
from jobrunner.common.receivedchunks import ReceivedChunks
from jobrunner.common.streamreader import (
    HEADERS_ALLOWANCE,
    MAX_LINE,
    PAYLOAD_BOUND,
    READ_LIMIT,
    READ_SIZE,
    StreamReader,
    StreamReaderError,
    frame_limit,
)
from tests.tools.reader_batches import sequences_until_raised


class FakeWriter:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data


def parser(skip: bytes | None) -> StreamReader:
    reader = StreamReader(
        None,  # type: ignore[arg-type]
        [],
        "S_EVENTS",
        "s.job.>",
        skip_subject_suffix=skip,
    )
    reader._writer = FakeWriter()  # type: ignore[assignment]
    return reader


def delivery(
    stream_seq: int, consumer_seq: int, pending: int, payload: bytes, subject: str, form: str
) -> bytes:
    if form == "v2":  # with a domain and an account hash, and a token at the end
        reply = f"$JS.ACK.dom.acc.S_EVENTS.c1.1.{stream_seq}.{consumer_seq}.17.{pending}.r"
    else:
        reply = f"$JS.ACK.S_EVENTS.c1.1.{stream_seq}.{consumer_seq}.17.{pending}"
    if form == "msg":  # no headers
        return f"MSG {subject} 1 {reply} {len(payload)}\r\n".encode() + payload + b"\r\n"
    headers = b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n"
    size = len(headers) + len(payload)
    head = f"HMSG {subject} 1 {reply} {len(headers)} {size}\r\n".encode()
    return head + headers + payload + b"\r\n"


FLOW_CONTROL = (
    b"HMSG inbox 1 $JS.FC.S_EVENTS.c1.abc 36 36\r\nNATS/1.0 100 FlowControl Request\r\n\r\n\r\n"
)

frames = st.lists(
    st.one_of(
        st.tuples(
            st.just("message"),
            st.binary(max_size=40),
            st.sampled_from(["s.job.j.lines", "s.job.j.status", "s.job.a-b_c.progress"]),
            st.sampled_from(["v1", "v1", "v2", "msg"]),
            st.integers(min_value=1, max_value=50),  # the stream's step to this message
        ),
        st.just(("flow control",)),
        st.just(("ping",)),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(
    frames=frames,
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
    skip=st.sampled_from([None, b".lines"]),
    pending=st.integers(min_value=0, max_value=10**12),
)
def test_every_message_comes_out_once_in_order_wherever_the_reads_are_cut(
    frames: list[tuple[Any, ...]], cuts: list[int], skip: bytes | None, pending: int
) -> None:
    """Deliveries in any form and order of frames, split across reads at any byte, come out
    exactly as they were stored (a skipped subject without its payload); every flow-control
    request and PING is answered; the last sequence and the pending count are the last
    message's."""
    expected: list[tuple[int, bytes]] = []
    answers = b""
    data = b""
    stream_seq = 0
    for frame in frames:
        if frame[0] == "message":
            _, payload, subject, form, step = frame
            stream_seq += step
            # The server counts down what it holds beyond each message.
            left = pending + len(frames) - len(expected)
            data += delivery(stream_seq, len(expected) + 1, left, payload, subject, form)
            skipped = skip is not None and subject.endswith(skip.decode())
            expected.append((stream_seq, b"" if skipped else payload))
        elif frame[0] == "flow control":
            data += FLOW_CONTROL
            answers += b"PUB $JS.FC.S_EVENTS.c1.abc 0\r\n\r\n"
        else:
            data += b"PING\r\n"
            answers += b"PONG\r\n"
    reader = parser(skip)
    got: list[tuple[int, bytes]] = []
    start = 0
    for cut in [*sorted(c for c in cuts if c < len(data)), len(data)]:
        got += reader._parse(data[start:cut])
        start = max(start, cut)
    assert got == expected
    assert reader._error is None
    assert reader._pieces == []
    assert reader._writer is not None
    assert reader._writer.sent == answers  # type: ignore[attr-defined]
    if expected:
        assert reader.last_seq == expected[-1][0]
        assert reader.pending == pending + len(frames) - len(expected) + 1


@given(
    before=st.integers(min_value=1, max_value=5),
    jump=st.integers(min_value=2, max_value=5),
    form=st.sampled_from(["v1", "v2", "msg"]),
)
def test_a_delivery_out_of_order_hands_out_those_before_it_then_raises_the_gap(
    before: int, jump: int, form: str
) -> None:
    """A missing delivery, whatever the frame's form: the messages before it are handed out,
    the gap is raised next, and a restart goes on after the last one received."""
    reader = parser(None)
    data = b"".join(delivery(n, n, 0, b"{}", "s.job.j.lines", form) for n in range(1, before + 1))
    late = before + jump
    data += delivery(late, late, 0, b"{}", "s.job.j.lines", form)
    assert [seq for seq, _ in reader._parse(data)] == list(range(1, before + 1))
    assert reader.last_seq == before
    assert type(reader._error).__name__ == "GapError"


@pytest.mark.parametrize("form", ["v1", "v2", "msg"])
def test_a_delivery_out_of_order_leaves_the_pending_count_of_the_last_one_handed_out(
    form: str,
) -> None:
    """The pending count a reader reports is the last handed-out message's, not that of the
    delivery after a gap, which was never handed out."""
    reader = parser(None)
    data = delivery(1, 1, 40, b"{}", "s.job.j.lines", form)
    data += delivery(3, 3, 7, b"{}", "s.job.j.lines", form)
    assert [seq for seq, _ in reader._parse(data)] == [1]
    assert type(reader._error).__name__ == "GapError"
    assert reader.pending == 40


HEARTBEAT = b"NATS/1.0 100 Idle Heartbeat\r\n\r\n"
LEADER_CHANGED = b"NATS/1.0 409 Leadership Change\r\n\r\n"
pending_frames = st.lists(
    st.one_of(
        st.tuples(
            st.just("message"),
            st.integers(min_value=0, max_value=10**20 - 1),  # its pending count
            st.sampled_from(["v1", "v1", "v2", "msg"]),
            st.sampled_from(["s.job.j.lines", "s.job.j.status"]),
        ),
        st.sampled_from([("flow control",), ("heartbeat",), ("status",), ("ping",)]),
    ),
    max_size=25,
)


@settings(max_examples=500, deadline=None)
@given(
    frames=pending_frames,
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
    skip=st.sampled_from([None, b".lines"]),
)
def test_the_pending_count_is_the_last_handed_out_messages_wherever_the_reads_are_cut(
    frames: list[tuple[Any, ...]], cuts: list[int], skip: bytes | None
) -> None:
    """After every read the reader reports what the consumer had left after the last message
    it handed out, whatever mix of messages, heartbeats, flow control and status frames came
    and wherever the reads were cut: the catch-up of a job's updates stops on it."""
    data = b""
    pendings = []  # each message's pending count, in order
    for frame in frames:
        if frame[0] == "message":
            pendings.append(frame[1])
            n = len(pendings)
            data += delivery(n * 3, n, frame[1], b'{"x":1}', frame[3], frame[2])
        elif frame[0] == "flow control":
            data += FLOW_CONTROL
        elif frame[0] == "ping":
            data += b"PING\r\n"
        else:
            headers = HEARTBEAT if frame[0] == "heartbeat" else LEADER_CHANGED
            data += b"HMSG _INBOX.x 1 %d %d\r\n%s\r\n" % (len(headers), len(headers), headers)
    reader = parser(skip)
    handed_out = start = 0
    for cut in [*sorted(c for c in cuts if c < len(data)), len(data)]:
        handed_out += len(reader._parse(data[start:cut]))
        start = max(start, cut)
        assert reader._error is None
        assert reader.pending == (pendings[handed_out - 1] if handed_out else None)
    assert handed_out == len(pendings)


class Hung(BaseException):  # not an Exception: no handler in the parse or its test takes it
    pass


def refusing_to_hang(work: Callable[[], Any]) -> Any:
    """``work()``, interrupted with ``Hung`` if it has not returned after 10 s (a parse that
    loops for ever would otherwise hold the whole test run)."""

    def interrupt(signum: int, frame: object) -> None:
        raise Hung("the parse never returned")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(10)
    try:
        return work()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class SocketWriter(FakeWriter):
    """What ``batches`` asks of the socket's writer after each read: nothing left to send."""

    class transport:  # asyncio's attribute name
        @staticmethod
        def get_write_buffer_size() -> int:
            return 0


async def batches_then_error(reader: StreamReader, data: bytes) -> tuple[list[int], Exception]:
    """The sequences ``batches`` hands out for ``data``, and the error it raises after them."""
    reader._reader = ReceivedChunks(READ_LIMIT)  # what ``open`` leaves, ``data`` received
    reader._reader.data_received(data)
    reader._writer = SocketWriter()  # type: ignore[assignment]
    return await sequences_until_raised(reader, Exception)


# Headers and a payload, 19 bytes with their CRLF.
HEADED_BODY = b'NATS/1.0\r\n\r\n{"a":1}\r\n'
# The frame limit of a server announcing at most 64 MiB: the largest max_payload nats-server
# starts with by default, and the headers' allowance.
LIMIT = PAYLOAD_BOUND + HEADERS_ALLOWANCE


@pytest.mark.parametrize(
    "bad_frame",
    [
        b"MSG x 1 -15\r\n",  # sends the parse back to this line's start
        b"HMSG x 1 -14 -14\r\n",
        b"MSG a 1 x\r\n",
        b"HMSG a 1 $JS.ACK.S.C.1.3.3.0.0 x 12\r\n",
        b"MSG a 1 +5\r\nhello\r\n",
        b"MSG a 1  5\r\nhello\r\n",
        b"MSG a 1 1_0\r\n0123456789\r\n",
        b"HMSG a\r\n",
        b"MSG 5\r\n",
        b"HMSG a 1 b c 12 12 12\r\n",
        # Headers larger than the whole message: the usual delivery's form (the fast path's)...
        b"HMSG s.job.j.lines 1 $JS.ACK.S_EVENTS.c1.1.3.3.17.0 40 12\r\nNATS/1.0\r\n\r\n\r\n",
        # ... a heartbeat's (the general parser's), and a stored message's in the v2 form.
        b"HMSG inbox 1 40 12\r\nNATS/1.0 100\r\n\r\n",
        b"HMSG s.job.j.lines 1 $JS.ACK.d.a.S_EVENTS.c1.1.3.3.17.0.r 13 12\r\nNATS/1.0\r\n\r\n\r\n",
        # Sizes no message can have: waited for without end, or too long for int().
        b"MSG x 1 1000000000000000000000000000000\r\n",
        b"MSG x 1 %d\r\n" % (LIMIT + 1),
        b"HMSG s.job.j.lines 1 $JS.ACK.S_EVENTS.c1.1.3.3.17.0 12 %d\r\n" % (LIMIT + 1),
        b"MSG x 1 " + b"9" * 5000 + b"\r\n",
        b"HMSG x 1 " + b"9" * 5000 + b" 12\r\n",
        # A line whose end never comes.
        b"MSG x 1 5" + b"5" * MAX_LINE,
        b"x" * (MAX_LINE + 2),
        # A size that does not match the body: the usual delivery's form (the fast path's) with
        # a body one or three bytes longer than it says, a heartbeat's, a plain MSG's.
        b"HMSG s.job.j.lines 1 $JS.ACK.S_EVENTS.c1.1.13.3.17.0 12 16\r\n" + HEADED_BODY,
        b"HMSG s.job.j.lines 1 $JS.ACK.S_EVENTS.c1.1.13.3.17.0 12 18\r\n" + HEADED_BODY,
        b"HMSG inbox 1 12 12\r\nNATS/1.0\r\n\r\nx\r\n",
        b"MSG x 1 $JS.ACK.S_EVENTS.c1.1.13.3.17.0 1\r\nab\r\n",
        # Lines no server sends.
        b"GARBAGE LINE\r\n",
        b"\r\n",
        b"PONGS\r\n",
    ],
    ids=lambda frame: frame[:40].decode(errors="replace") + f"...({len(frame)} bytes)",
)
def test_a_frame_with_a_negative_or_non_numeric_size_is_refused_not_looped_on(
    bad_frame: bytes,
) -> None:
    """A control line with a size that is not plain digits, with too few or too many fields,
    with headers larger than the message, with a size over what a message can have or that
    does not match its body, a line no server sends, or a line that never ends, is an error
    from NATS (named with the line), raised after the messages before it were handed out: never
    an endless parse, a buffer that grows without a bound, a message cut where its size says,
    nor an error the reader's users do not expect."""
    good = b"".join(delivery(n, n, 0, b"{}", "s.job.j.lines", "v1") for n in (1, 2))
    reader = parser(None)
    out = refusing_to_hang(lambda: reader._parse(good + bad_frame))
    assert [seq for seq, _ in out] == [1, 2]
    assert isinstance(reader._error, StreamReaderError)
    assert "malformed frame from NATS" in str(reader._error)
    with pytest.raises(StreamReaderError, match="malformed frame from NATS"):
        refusing_to_hang(lambda: parser(None)._parse(bad_frame))

    seqs, error = refusing_to_hang(
        lambda: asyncio.run(batches_then_error(parser(None), good + bad_frame))
    )
    assert seqs == [1, 2]
    assert isinstance(error, StreamReaderError)
    assert "malformed frame from NATS" in str(error)


# What nats-server puts in a frame's head: a subject is any bytes but whitespace (dots between
# tokens), stream and consumer names have no dots either; the numbers are digits.
digits = st.integers(min_value=0, max_value=10**19).map(lambda n: str(n).encode())
name_bytes = st.one_of(
    st.binary(min_size=1, max_size=12).filter(lambda b: not any(c in b for c in b" \t\r\n.")),
    digits,  # a name of digits looks like a number to a careless pattern
)
subjects = st.lists(name_bytes, min_size=1, max_size=5).map(b".".join)


@st.composite
def any_frame(draw: st.DrawFn, consumer_seq: int) -> tuple[bytes, int]:
    """A frame sent after ``consumer_seq`` deliveries, and the count after it: only a delivery
    advances it. One delivery or heartbeat in ten is deliberately out of order (a gap)."""
    kind = (
        "bad size"
        if draw(st.integers(0, 40)) == 0
        else draw(
            st.sampled_from(["v1", "v1", "v1", "v2", "msg", "flow", "ping", "heartbeat", "ok"])
        )
    )
    if kind == "bad size":  # a size no server sends: refused, never looped on
        bad = draw(st.sampled_from([b"-15", b"-1", b"x", b"+5", b"1_0", b""]))
        if draw(st.booleans()):
            return b"MSG a 1 %s\r\n" % bad, consumer_seq
        return b"HMSG a 1 $JS.ACK.S.C.1.1.1.0.0 %s 12\r\n" % bad, consumer_seq
    if kind == "ping":
        return b"PING\r\n", consumer_seq
    if kind == "ok":  # sent to a verbose client: read and passed over
        return draw(st.sampled_from([b"+OK\r\n", b"PONG\r\n"])), consumer_seq
    if kind == "heartbeat":
        headers = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: %d\r\n\r\n" % draw(
            st.sampled_from([consumer_seq] * 9 + [consumer_seq + 1])
        )
        return b"HMSG _INBOX.x 1 %d %d\r\n%s\r\n" % (
            len(headers),
            len(headers),
            headers,
        ), consumer_seq
    if kind == "flow":
        headers = b"NATS/1.0 100 FlowControl Request\r\n\r\n"
        reply = b"$JS.FC." + draw(name_bytes) + b"." + draw(name_bytes) + b".t"
        return b"HMSG _INBOX.x 1 %s %d %d\r\n%s\r\n" % (
            reply,
            len(headers),
            len(headers),
            headers,
        ), consumer_seq
    stream, consumer = draw(name_bytes), draw(name_bytes)
    # Mostly the next delivery; sometimes one out of order (a gap), or a number with zeros.
    delivered = draw(st.sampled_from([consumer_seq + 1] * 27 + [consumer_seq + 2, consumer_seq, 0]))
    cseq = str(delivered).encode()
    if draw(st.integers(0, 20)) == 0:
        cseq = b"0" + cseq
    # <delivered count> (1: a consumer without acks sends each once) <stream seq> <consumer seq>
    # <time> <pending>
    numbers = [draw(st.sampled_from([b"1", b"2"])), draw(digits), cseq, draw(digits), draw(digits)]
    reply = b".".join([b"$JS", b"ACK", stream, consumer, *numbers])
    if kind == "v2":
        reply = b".".join([b"$JS", b"ACK", draw(name_bytes), draw(name_bytes), stream, consumer])
        reply += b"." + b".".join(numbers) + b".r"
    # Bodies are the publishers' bytes: anything, frames and line ends included, small or large.
    payload = draw(
        st.one_of(
            st.binary(max_size=60),
            st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(0, 700)),
            st.just(b"\r\nHMSG a 1 $JS.ACK.S.C.1.2.3.4.5 0 0\r\n"),
            st.just(b"to the size table's end"),  # made to size below, with the headers
        )
    )
    # The size table ends at 4095: sizes either side of it must read the same as int() does.
    table_edge = st.sampled_from([4094, 4095, 4096, 4097])
    subject = draw(subjects)
    # A size with a leading zero is still that size (the table has no such key).
    total_zero = b"0" if draw(st.integers(0, 9)) == 0 else b""
    if kind == "msg":
        if payload == b"to the size table's end":
            payload = b"p" * draw(table_edge)
        return b"MSG %s 1 %s %s%d\r\n%s\r\n" % (
            subject,
            reply,
            total_zero,
            len(payload),
            payload,
        ), consumer_seq + 1
    if draw(st.integers(0, 15)) == 0:  # no headers, no body: sizes 0 and 0
        return b"HMSG %s 1 %s 0 0\r\n\r\n" % (subject, reply), consumer_seq + 1
    # Headers of any length: a few dozen bytes, or themselves around the size table's end.
    header_size = draw(st.one_of(st.just(12), st.integers(27, 70), table_edge))
    headers = b"NATS/1.0\r\n\r\n"
    if header_size > len(headers):
        headers = b"NATS/1.0\r\nNats-Msg-Id: " + b"h" * (header_size - 27) + b"\r\n\r\n"
    if payload == b"to the size table's end":
        payload = b"p" * max(0, draw(table_edge) - len(headers))
    header_zero = b"0" if draw(st.integers(0, 9)) == 0 else b""
    size = len(headers) + len(payload)
    return b"HMSG %s 1 %s %s%d %s%d\r\n%s%s\r\n" % (
        subject,
        reply,
        header_zero,
        len(headers),
        total_zero,
        size,
        headers,
        payload,
    ), consumer_seq + 1


@st.composite
def refused_frame(draw: st.DrawFn, consumer_seq: int) -> bytes:
    """A frame no server sends, after ``consumer_seq`` deliveries, which the reader must refuse
    however well the rest of it looks: headers larger than the message (in the usual
    delivery's form, the fast path's, and in a heartbeat's), a size no message can have (one
    byte over the limit, a few dozen digits, too many for ``int()``), a size that does not match
    its body, a line no server sends, a line that never ends."""
    kind = draw(
        st.sampled_from(
            ["delivery headers", "heartbeat headers", "size", "line", "mismatch", "garbage"]
        )
    )
    if kind == "line":
        return b"x" * (MAX_LINE + 2)
    if kind == "garbage":  # a line that is none of the frames a server sends
        line = draw(st.binary(max_size=30).filter(lambda b: b"\r\n" not in b))
        return b"GARBAGE " + line + b"\r\n"
    if kind == "mismatch":  # a delivery's body longer than its size says
        headers, payload = b"NATS/1.0\r\n\r\n", b'{"a":1}'
        short = draw(st.integers(1, len(payload)))
        reply = b"$JS.ACK.S_EVENTS.c1.1.7.%d.17.0" % (consumer_seq + 1)
        declared = len(headers) + len(payload) - short
        return b"HMSG s.job.j.lines 1 %s %d %d\r\n%s%s\r\n" % (
            reply,
            len(headers),
            declared,
            headers,
            payload,
        )
    if kind == "size":
        size = draw(st.sampled_from([b"%d" % (LIMIT + 1), b"9" * 30, b"9" * 5000]))
        if draw(st.booleans()):
            return b"MSG s.job.j.lines 1 %s\r\n" % size
        reply = b"$JS.ACK.S_EVENTS.c1.1.7.%d.17.0" % (consumer_seq + 1)
        return b"HMSG s.job.j.lines 1 %s 12 %s\r\n" % (reply, size)
    total = draw(st.integers(0, 40))
    header_size = draw(st.integers(total + 1, total + 4200))  # either side of the size table
    if kind == "heartbeat headers":
        return b"HMSG _INBOX.x 1 %d %d\r\n%s\r\n" % (header_size, total, b"h" * total)
    subject = draw(st.sampled_from([b"s.job.j.lines", b"s.job.j.status"]))
    reply = b"$JS.ACK.S_EVENTS.c1.1.%d.%d.17.0" % (draw(st.integers(1, 10**6)), consumer_seq + 1)
    return b"HMSG %s 1 %s %d %d\r\n%s\r\n" % (subject, reply, header_size, total, b"h" * total)


@st.composite
def any_reads(draw: st.DrawFn) -> tuple[list[bytes], int | None]:
    """What the server sends, cut into reads; and, when it holds a frame the reader must refuse,
    the number of deliveries before the first such frame (else None)."""
    data = b""
    consumer_seq = 0
    refused_after = None
    for _ in range(draw(st.integers(0, 25))):
        if draw(st.integers(0, 30)) == 0:
            data += draw(refused_frame(consumer_seq))
            refused_after = consumer_seq if refused_after is None else refused_after
            continue
        frame, consumer_seq = draw(any_frame(consumer_seq))
        data += frame
    cuts = sorted(draw(st.lists(st.integers(0, max(len(data), 1)), max_size=6)))
    reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return reads, refused_after


def read_through(reader: StreamReader, reads: list[bytes]) -> list[object]:
    """What a reader hands out and raises, read by read, up to its first error (only ever a
    StreamReaderError: anything else fails the test). Every body is ``bytes``, not a view that
    merely compares equal: the replay's feed (branch s37replayrows) searches bodies with
    ``bytes.find`` and keeps them after the read's buffer is gone."""
    seen: list[object] = []
    for chunk in reads:
        try:
            batch = reader._parse(chunk)
            assert all(type(body) is bytes for _, body in batch)
            seen.append(batch)
        except StreamReaderError as exc:
            seen.append((type(exc).__name__, str(exc)))
            break
        if reader._error is not None:
            seen.append((type(reader._error).__name__, str(reader._error)))
            break
        seen.append(
            (reader.last_seq, reader.pending, reader._consumer_seq, b"".join(reader._pieces))
        )
    assert reader._writer is not None
    seen.append(reader._writer.sent)  # type: ignore[attr-defined]
    return seen


@settings(max_examples=300, deadline=None)
@given(reads_and_refusal=any_reads(), skip=st.sampled_from([None, b".lines", b"x"]))
def test_the_usual_frames_fast_path_reads_what_the_general_parser_reads(
    reads_and_refusal: tuple[list[bytes], int | None], skip: bytes | None
) -> None:
    """Whatever the server sends and the publishers wrote, cut anywhere: the reader hands out,
    answers and raises exactly what it would if every frame went through the general parser
    (the fast path's regular expression, its size table and its run's checks never change a
    result); and a frame it must refuse ends the reading with an error, no message from it or
    after it handed out."""
    reads, refused_after = reads_and_refusal
    fast = refusing_to_hang(lambda: read_through(parser(skip), reads))
    never = re.compile(rb"(?!)")
    with (
        mock.patch.object(streamreader, "_DELIVERY", never),
        mock.patch.object(streamreader, "_DELIVERY_WITH_SUBJECT", never),
    ):
        general = refusing_to_hang(lambda: read_through(parser(skip), reads))
    assert fast == general
    if refused_after is not None:
        error = fast[-2]  # the last before what was sent
        assert isinstance(error, tuple), "no error after a frame that must be refused"
        assert isinstance(error[0], str), "no error after a frame that must be refused"
        handed_out = sum(len(batch) for batch in fast if isinstance(batch, list))
        assert handed_out <= refused_after


@pytest.mark.parametrize(
    "frame",
    [
        # A line end inside the subject: the general parser sees "HMSG a" and refuses it.
        b"HMSG a\r\nb 1 $JS.ACK.S.C.1.7.1.0.0 12 14\r\nNATS/1.0\r\n\r\nab\r\n",
        # A space inside the stream name: one field too many for the general parser.
        b"HMSG a 1 $JS.ACK.S T.C.1.7.1.0.0 12 14\r\nNATS/1.0\r\n\r\nab\r\n",
    ],
)
def test_the_fast_path_trusts_nats_servers_framing_on_heads_it_never_sends(frame: bytes) -> None:
    """The fast path's classes do not exclude a line end or a space where nats-server never
    puts one (that check cost more than it was worth): on such a head it hands the message out,
    where the general parser would not. Recorded so that a change to either is a choice."""
    assert parser(None)._parse(frame) == [(7, b"ab")]
    never = re.compile(rb"(?!)")
    general = parser(None)
    with (
        mock.patch.object(streamreader, "_DELIVERY", never),
        mock.patch.object(streamreader, "_DELIVERY_WITH_SUBJECT", never),
        pytest.raises(StreamReaderError, match="malformed frame from NATS"),
    ):
        general._parse(frame)


def test_a_message_as_large_as_a_frame_may_be_is_read_whole_and_one_byte_more_is_refused() -> None:
    """The largest message a server with the default ``max_payload`` can send (its headers
    allowed for) is handed out whole, read in pieces; a size one byte larger is refused as soon
    as its head has come, none of its body waited for."""
    headers = len(delivery(1, 1, 0, b"", "s.job.j.lines", "v1").split(b"\r\n", 1)[1]) - 2
    largest = b"p" * (LIMIT - headers)
    data = delivery(1, 1, 0, largest, "s.job.j.lines", "v1") + delivery(2, 2, 0, b"{}", "x", "v1")
    assert b" %d\r\n" % LIMIT in data[:200]
    reader = parser(None)
    got = []
    for start in range(0, len(data), READ_SIZE):
        got += reader._parse(data[start : start + READ_SIZE])
    assert got == [(1, largest), (2, b"{}")]
    assert reader._error is None

    over = delivery(1, 1, 0, largest + b"p", "s.job.j.lines", "v1")
    head = over[: over.index(b"\r\n") + 2]
    with pytest.raises(StreamReaderError, match=f"a size over the {LIMIT} bytes"):
        parser(None)._parse(head)


def test_a_line_as_long_as_a_line_may_be_is_read_and_one_byte_longer_is_refused() -> None:
    """A line of ``MAX_LINE`` bytes is waited for until its end comes, then read (here, an
    INFO padded with spaces); one byte longer is refused once it cannot end within the bound."""
    longest = b"INFO {}" + b" " * (MAX_LINE - 7) + b"\r\n"
    after = delivery(1, 1, 0, b"{}", "s.job.j.lines", "v1")
    reader = parser(None)
    assert reader._parse(longest[:-1]) == []  # all but its LF: the end may yet come
    assert reader._error is None
    assert reader._parse(longest[-1:] + after) == [(1, b"{}")]

    longer = b"INFO {}" + b" " * (MAX_LINE - 6) + b"\r\n"
    reader = parser(None)
    assert reader._parse(longer[: MAX_LINE + 1]) == []  # could still end within the bound
    with pytest.raises(StreamReaderError, match=f"a line over {MAX_LINE} bytes"):
        reader._parse(longer[MAX_LINE + 1 :])


def test_the_frame_limit_follows_the_servers_max_payload_and_a_later_info() -> None:
    """A server announcing a larger ``max_payload`` than 64 MiB (at connect, or in a later INFO
    after a reload) has messages that large waited for; over it, refused."""
    larger = 128 << 20
    assert frame_limit({"max_payload": larger}) == larger + HEADERS_ALLOWANCE
    reader = parser(None)
    assert reader._parse(b'INFO {"max_payload": %d}\r\n' % larger) == []
    assert reader._parse(b"MSG x 1 %d\r\n" % (larger + HEADERS_ALLOWANCE)) == []
    assert reader._error is None
    with pytest.raises(StreamReaderError, match="malformed frame from NATS"):
        parser(None)._parse(b"MSG x 1 %d\r\n" % (larger + HEADERS_ALLOWANCE))


@pytest.mark.parametrize("later", [b'{"max_payload": 1024}', b'{"max_payload": -1}', b"{", b"{}"])
def test_a_later_info_never_lowers_the_frame_limit(later: bytes) -> None:
    """A reload that lowers ``max_payload`` (or an INFO with an impossible one, or none) leaves
    the limit: the messages stored before are still delivered as stored, and read."""
    larger = 128 << 20
    reader = parser(None)
    assert reader._parse(b'INFO {"max_payload": %d}\r\n' % larger) == []
    assert reader._parse(b"INFO " + later + b"\r\n") == []
    assert reader._parse(b"MSG x 1 %d\r\n" % (larger + HEADERS_ALLOWANCE)) == []
    assert reader._error is None


@pytest.mark.parametrize("max_payload", [1, 4096, 1 << 20, 8 << 20, PAYLOAD_BOUND, None])
def test_a_server_with_a_smaller_max_payload_keeps_the_default_limit(
    max_payload: int | None,
) -> None:
    """A ``max_payload`` up to 64 MiB (or none announced) bounds a frame at what any server
    with nats-server's default ``max_pending`` could have stored: a message stored before an
    operator lowered it, or on a node of the cluster with a larger one, is still read."""
    info = {} if max_payload is None else {"max_payload": max_payload}
    assert frame_limit(info) == LIMIT


@pytest.mark.parametrize("announced", [0, -1, 1 << 31, 10**30, "1048576", 1.5, True, None])
def test_a_max_payload_no_nats_server_announces_is_refused(announced: object) -> None:
    """An INFO whose ``max_payload`` is not a size an int32 holds names no NATS server."""
    with pytest.raises(ValueError, match="max_payload"):
        frame_limit({"max_payload": announced})


def test_a_heartbeat_naming_a_delivery_count_past_64_bits_is_not_taken_for_one() -> None:
    """A heartbeat's ``Nats-Last-Consumer`` too long to be a count is ignored, as one that is
    not digits is: never an error the reader's users do not expect."""
    headers = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: " + b"9" * 5000 + b"\r\n\r\n"
    beat = b"HMSG _INBOX.x 1 %d %d\r\n%s\r\n" % (len(headers), len(headers), headers)
    reader = parser(None)
    assert reader._parse(delivery(1, 1, 0, b"{}", "s.job.j.lines", "v1") + beat) == [(1, b"{}")]
    assert reader._error is None


def test_a_delivery_whose_pending_count_no_int_takes_is_refused() -> None:
    """A pending count of thousands of digits is no JetStream delivery: refused as it is read,
    not handed out for ``pending`` to fail on later."""
    reply = b"$JS.ACK.S_EVENTS.c1.1.1.1.17." + b"9" * 5000
    frame = b"HMSG s.job.j.lines 1 %s 12 14\r\nNATS/1.0\r\n\r\n{}\r\n" % reply
    with pytest.raises(StreamReaderError, match="not a JetStream delivery"):
        parser(None)._parse(frame)


BIG = bytes(range(256)) * 40  # 10 KiB: more than a read's bytes joined ahead of a cut head


@pytest.mark.parametrize("size", [10, len(BIG)])
def test_a_frame_cut_anywhere_across_reads_is_read_whole_and_once(size: int) -> None:
    """A delivery cut between two or three reads anywhere (in its head, its headers, its body,
    its end), small or larger than what a read joins ahead of a cut head: every message comes
    once, whole and in order, and nothing is left held."""
    data = (
        delivery(1, 1, 2, b"{}", "s.job.j.lines", "v1")
        + delivery(2, 2, 1, BIG[:size], "s.job.j.lines", "v1")
        + delivery(3, 3, 0, b"[]", "s.job.j.lines", "v1")
    )
    expected = [(1, b"{}"), (2, BIG[:size]), (3, b"[]")]
    first = len(delivery(1, 1, 2, b"{}", "s.job.j.lines", "v1"))
    for cut in range(first + 1, len(data) - 1, 7):
        for second in (cut + 3, cut + 200):
            reader = parser(None)
            got = reader._parse(data[:cut]) + reader._parse(data[cut:second])
            got += reader._parse(data[second:])
            assert got == expected, (cut, second)
            assert reader._pieces == []
