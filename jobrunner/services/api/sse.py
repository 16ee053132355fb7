"""Server-Sent Events from JetStream.

The SSE ``id`` is the JetStream stream sequence of the event; a batched LineLogged message carries
several lines, so each line's id is ``<stream sequence>:<index in the batch>``. ``Last-Event-ID``
in either form resumes right after that event: nothing twice, nothing missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.js import JetStreamContext

from jobrunner.common import metrics
from jobrunner.common.consumerlimit import at_consumer_limit
from jobrunner.common.lastevent import last_readable
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.api.directwrite import ChunkWriter, http_chunk
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.fanout import (
    TAKE_BYTES,
    Batch,
    Fanout,
    HistoryStalled,
    Item,
)

log = structlog.get_logger()

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # proxies must not buffer a live stream
}

_encoder = msgspec.json.Encoder()
# Valid in JSON, but line breaks to clients that split lines the Unicode way (Python's
# str.splitlines, some SSE libraries): escaped, so a log line can never forge an SSE field.
_UNICODE_BREAKS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


def escape_breaks(out: bytes) -> bytes:
    if out.isascii():  # one pass instead of three, for what is almost always plain ASCII
        return out
    for raw, escaped in _UNICODE_BREAKS:
        if raw in out:
            out = out.replace(raw, escaped)
    return out


def encode_data(data: Any) -> bytes:
    """JSON for one SSE ``data:`` line: never contains any kind of line break."""
    return escape_breaks(_encoder.encode(data))


# The largest stream sequence a client may name (``after``, ``Last-Event-ID``): the read models
# keep sequences in Postgres bigint columns (``stream_seq``, signed 64-bit), so none beyond it
# is ever stored. JetStream's own are unsigned 64-bit: 2**63 to 2**64-2 could be asked of it,
# and answer 400 on purpose (one rule for every place a sequence is named); beyond 2**64 not
# even that (before session 41 an event page's request failed there, answered 503).
MAX_STREAM_SEQ = 2**63 - 1

# An id as the server sends it: ASCII digits only (Python's int() also takes "1_000", "+5" and
# other scripts' digits, and refuses more than 4300 digits with a ValueError of its own), with
# at most as many digits as MAX_STREAM_SEQ has once leading zeros (which mean nothing: "007" is
# 7, as int() reads it) are left aside.
_RESUME_ID = re.compile(r"0*([0-9]{1,19})(?::0*([0-9]{1,19}))?")


@dataclass(frozen=True)
class ResumePoint:
    stream_seq: int
    line_index: int | None = None

    @classmethod
    def parse(cls, raw: str | None) -> ResumePoint | None:
        """``None`` for a missing header and for any value that is not an id the server sends
        (``<seq>`` or ``<seq>:<index>``, ASCII digits, leading zeros allowed, each at most
        ``MAX_STREAM_SEQ``): the
        stream then starts from the beginning, as without one."""
        if not raw:
            return None
        found = _RESUME_ID.fullmatch(raw.strip(" \t"))  # HTTP's optional white space only
        if found is None:
            return None
        seq, index = found.groups()
        point = cls(int(seq), int(index) if index is not None else None)
        if point.stream_seq > MAX_STREAM_SEQ or (point.line_index or 0) > MAX_STREAM_SEQ:
            return None
        return point

    @property
    def next_seq(self) -> int:
        # Mid-batch: that message again (its earlier lines are skipped); else the one after.
        return self.stream_seq if self.line_index is not None else self.stream_seq + 1


async def refuse_an_id_ahead(js: JetStreamContext, names: Names, seq: int, source: str) -> None:
    """400 when ``seq`` (from ``Last-Event-ID``, or ``?after=`` when ``source`` names it) lies
    beyond the stream's last event: no stream handed it out (another installation's, a stream
    made anew), and a stream resumed there would stay silent until the stream reached it."""
    last = (await js.stream_info(names.stream)).state.last_seq
    if seq <= last:
        return
    if source == "last-event-id":
        raise ApiError(
            400,
            "LAST_EVENT_ID_AHEAD",
            f"Last-Event-ID {seq} is beyond the last stored event ({last}); "
            "reconnect without it to read the stream from the start.",
            last_event_id=seq,
            stream_last_seq=last,
        )
    raise ApiError(
        400,
        "INVALID_QUERY",
        f"{source!r} ({seq}) is beyond the last stored event ({last}).",
        field=source,
        stream_last_seq=last,
    )


# A line's SSE frame at its largest: JSON may write a byte of text as six (\u00XX), plus the
# frame's fields and id.
LINE_FRAME_GROWTH = 6
LINE_FRAME_OVERHEAD = 256


def short_past(log_count: int, max_line_bytes: int, client_bytes: int) -> bool:
    """May a job's feed start at its first client's start, sending the job's past itself?

    The feed sends what it reads without waiting for a slow client (one over its buffer is cut
    and resumes), while a history read goes at the client's pace. So only a past that fits in
    half a client's buffer even with every line at its largest is sent by the feed: a job just
    started (the usual first viewer), which then needs no history read before its first line."""
    worst_line = LINE_FRAME_GROWTH * max_line_bytes + LINE_FRAME_OVERHEAD
    return log_count * worst_line <= client_bytes // 2


async def last_status(
    js: JetStreamContext, names: Names, job_id: str
) -> tuple[int, events.StatusChanged] | None:
    """The job's latest StatusChanged and its stream sequence, straight from JetStream (one
    not written by jobrunner is skipped: ``lastevent``)."""
    subject = names.job_kind_subject(job_id, "status")
    return await last_readable(js, names.stream, subject, events.StatusChanged, job_id)


def frame(data: Any, event: str | None = None, id: str | None = None) -> bytes:
    parts = []
    if id is not None:
        parts.append(f"id: {id}\n")
    if event is not None:
        parts.append(f"event: {event}\n")
    # JSON never contains a raw newline, so one data line is always enough.
    parts.append(f"data: {encode_data(data).decode()}\n\n")
    return "".join(parts).encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def consumer_limit_reached(retry_ms: int) -> bytes:
    """The last frame of a stream that could not read because JetStream kept refusing it a
    consumer (the stream's ``max_consumers`` held, err_code 10026) for the reader's patience;
    the stream then ends without ``done`` and the client reconnects."""
    return _unavailable(
        retry_ms,
        "STREAM_CONSUMER_LIMIT",
        "The event stream holds its limit of readers; this stream ends and reconnects after "
        "the retry interval.",
    )


def nats_unavailable(retry_ms: int) -> bytes:
    """The last frame of a stream whose reading met a NATS fault (a request to JetStream timed
    out: the server paused or unreachable); the stream then ends without ``done`` and the client
    resumes after the last id it got."""
    return _unavailable(
        retry_ms,
        "NATS_UNAVAILABLE",
        "The event store did not answer; this stream ends and resumes after the retry interval.",
    )


def read_models_of_another_version(retry_ms: int, code: str, sentence: str) -> bytes:
    """The last frame of a stream whose reads the read models' version refuses (``code``:
    ``READ_MODELS_NEWER``, ``READ_MODELS_REBUILDING``, ``REBUILD_ABANDONED``); the stream then
    ends without ``done``, and the client's reconnect is answered 503 with the same code."""
    return _unavailable(retry_ms, code, sentence)


def resync() -> bytes:
    """The frame telling a viewer to load its lists again: the stream could not read the read
    models for a while (Postgres away or frozen) and sent only what the events told, leaving out
    what it could not look up. No ``id``: the stream's resume point stays that of its last
    event."""
    return frame(
        {
            "code": "READ_MODELS_BACK",
            "detail": "The read models answer again; load what you show again to catch up.",
        },
        event="resync",
    )


def stale(silent: bool) -> bytes:
    """The frame telling a viewer that NATS does not answer the API (``silent``: its live events
    stop meanwhile, and resume where they stopped) or answers again. No ``id``: the stream's
    resume point stays that of its last event."""
    if not silent:
        return frame({"stale": False}, event="stale")
    return frame(
        {
            "stale": True,
            "code": "NATS_SILENT",
            "detail": "The event store does not answer; live events resume where they stopped "
            "once it does.",
        },
        event="stale",
    )


def _unavailable(retry_ms: int, code: str, detail: str) -> bytes:
    """An ``unavailable`` frame with a code and a sentence. Its ``retry`` is ``retry_ms``
    stretched by a random factor of 1 to 2: the clients cut together must not all come back
    together."""
    return retry(round(retry_ms * random.uniform(1.0, 2.0))) + frame(
        {"code": code, "detail": detail}, event="unavailable"
    )


def is_nats_fault(exc: BaseException) -> bool:
    """NATS busy or away (nats-py's errors, JetStream's, a timeout): what ends a stream with
    ``nats_unavailable`` rather than cut its connection."""
    return isinstance(exc, nats.errors.Error | TimeoutError)


def retry(ms: int) -> bytes:
    return f"retry: {ms}\n\n".encode()


class LinePayload(msgspec.Struct, gc=False):
    """A line as SSE ``data`` (a Struct: encoded faster than a dict, same JSON; refers to no
    container, so kept out of the cycle collector, whose passes its creation would hasten)."""

    seq: int
    stream: str
    level: str
    timestamp: datetime
    text: str


# A batch's payloads are encoded as one JSON array and cut between its objects: inside a JSON
# string a quote is always escaped, so '},{"seq":' only ever occurs between two objects.
_FIRST_PAYLOAD = b'[{"seq":'
_NEXT_PAYLOAD = b'},{"seq":'


def line_frames(
    event: events.LineLogged, seq: int, first: int = 0, stop: int | None = None
) -> list[bytes]:
    """One frame per line (``id: <stream seq>:<line index>``), with one encoder call for the
    whole batch rather than one per line; of the lines ``[first, stop)`` only when given."""
    lines = event.lines if first == 0 and stop is None else event.lines[first:stop]
    payloads = [LinePayload(ln.seq, ln.stream, ln.level, ln.timestamp, ln.text) for ln in lines]
    if not payloads:
        return []
    data = escape_breaks(_encoder.encode(payloads))
    parts = data[len(_FIRST_PAYLOAD) : -2].split(_NEXT_PAYLOAD)
    return [
        b'id: %d:%d\ndata: {"seq":%b}\n\n' % (seq, i, part) for i, part in enumerate(parts, first)
    ]


def status_payload(event: events.StatusChanged) -> dict[str, Any]:
    return {
        "status": event.status.value,
        "exit_code": event.exit_code,
        "error": msgspec.to_builtins(event.error) if event.error else None,
        "result": event.result,
        "timestamp": event.occurred_at,
    }


def frames_for(event: events.AnyEvent, seq: int, skip_lines_upto: int | None) -> list[bytes]:
    match event:
        case events.LineLogged():
            frames = line_frames(event, seq)
            return frames if skip_lines_upto is None else frames[skip_lines_upto + 1 :]
        case events.StatusChanged():
            out = [frame(status_payload(event), event="status", id=str(seq))]
            if event.status.is_terminal:
                out.append(frame(status_payload(event), event="done"))
            return out
        case events.ProgressReported():
            return [
                frame(
                    {
                        "current": event.current,
                        "total": event.total,
                        "percent": event.percent,
                        "phase": event.phase,
                        "message": event.message,
                    },
                    event="progress",
                    id=str(seq),
                )
            ]
        case events.CancelRequested():
            return [
                frame(
                    {"requested_by": event.requested_by, "timestamp": event.occurred_at},
                    event="cancel_requested",
                    id=str(seq),
                )
            ]
    return []


def _unsent(
    items: list[Item], sent: int, skip: int | None, skip_seq: int | None
) -> tuple[list[bytes], int, bool]:
    """The frames of ``items`` after ``sent``, up to the job's end; the last sequence sent; and
    whether the end is among them."""
    parts = []
    for item in items:
        if item.seq <= sent and not item.terminal:
            continue  # an end comes once, last, even after events stored after it (EndLast)
        parts.append(item.chunk_after_line(skip if item.seq == skip_seq else None))
        sent = item.seq
        if item.terminal:
            return parts, sent, True
    return parts, sent, False


def _batch_wire(
    batch: Batch, sent: int, skip: int | None, skip_seq: int | None
) -> tuple[bytes, int]:
    """What a client written to straight is sent of a non-terminal ``batch``: the frames of its
    items after ``sent`` (``_unsent``'s) as one HTTP chunk, b"" when none; and the last
    sequence sent. The usual case, every item unsent and none cut by a resume inside a batch,
    is the batch's own chunk, framed once and shared by every client of the feed (its items are
    in stream order, so the first one's sequence says whether all are unsent)."""
    items = batch.items
    first = items[0].seq
    if first > sent and (skip_seq is None or first > skip_seq):
        wire = batch.wire
        if wire is None and batch.size:
            wire = batch.wire = http_chunk(b"".join(item.chunk for item in items))
        return wire or b"", items[-1].seq
    parts, last, _ = _unsent(items, sent, skip, skip_seq)
    body = b"".join(parts)
    return (http_chunk(body) if body else b""), last


async def job_stream(
    retry_ms: int,
    fanout: Fanout,
    job_id: str,
    start_seq: int,
    resume: ResumePoint | None,
    already_done: dict[str, Any] | None,
    feed_from: int | None = None,
    writer: ChunkWriter | None = None,
    row: Mapping[str, Any] | None = None,
) -> AsyncIterator[bytes]:
    """Yield SSE frames for one job from ``start_seq`` until its terminal status.

    Ends early, without ``done``, when the client is cut (its backlog is over a limit, or its
    history read stalled): its EventSource reconnects and resumes after the last id it got.

    With a ``writer`` (the client's connection, ``directwrite``), the feed writes the frames of
    a batch straight to it while this stream waits with everything before them sent; the job's
    end, and whatever the writer declines, still comes through here. ``row``: the job's row,
    kept by its feed for the next clients (``Fanout.known_row``)."""
    yield retry(retry_ms)
    if already_done is not None:
        yield frame(already_done, event="done")
        return
    skip = resume.line_index if resume and resume.line_index is not None else None
    skip_seq = resume.stream_seq if resume is not None and skip is not None else None
    # A feed that starts may wait for a place on the stream (its consumer limit), up to
    # ``history_idle``: no keep-alive meanwhile (joining in a task of its own for them cost the
    # join loop turns that the streams' ordering relies on). With a history read after it, the
    # silence can pass the keep-alive interval (README "SSE protocol").
    feed, inbox, joined_at = await fanout.join(job_id, feed_from, row)
    if feed.ended and feed.failure is not None and at_consumer_limit(feed.failure):
        feed.leave(inbox)
        yield consumer_limit_reached(retry_ms)  # the feed could not start: say why (it resumes)
        return

    def failed_by_nats() -> bool:
        """The feed ended on a NATS fault (its consumer not made: NATS paused or away), which
        cut this stream: the client is told, and resumes after the last id it got."""
        return feed.failure is not None and is_nats_fault(feed.failure)

    # Taken in the same step as the join: the record ends exactly where the inbox begins.
    recorded = feed.recorded_since(start_seq) if start_seq <= joined_at else None
    if recorded is None and start_seq <= joined_at:
        # In line for a history read, from the join on: the feed hands this client nothing
        # until its turn (``Subscriber.on_hold``).
        inbox.on_hold = True
    else:
        inbox.reads_live()
    sent = start_seq - 1
    told_silent = False  # what the viewer was last told of NATS (``stale``)
    try:
        if recorded is not None and not inbox.overflow:
            # The feed kept what it handed on since our start: no read from JetStream.
            parts, sent, ended = _unsent(recorded, sent, skip, skip_seq)
            if parts:
                yield b"".join(parts)
            if ended:
                return
        elif start_seq <= joined_at and not inbox.overflow:
            # The feed is past our start: catch up from JetStream, then follow the feed.
            try:
                async with fanout.history_turn() as turn:
                    # In line for a read: a keep-alive goes out as on an idle stream (a proxy
                    # closes a silent one). The inbox's wake-up is set only by a cut meanwhile.
                    while not await turn.taken(fanout.limits.keepalive, inbox.wakeup):
                        if inbox.overflow or (writer is not None and writer.gone):
                            if failed_by_nats():
                                yield nats_unavailable(retry_ms)
                            return  # the feed failed, or the client left
                        if told_silent != fanout.nats_silent:
                            told_silent = fanout.nats_silent
                            yield stale(told_silent)
                        yield comment("keep-alive")
                    if inbox.overflow or (writer is not None and writer.gone):
                        return  # in the same step as the turn: no read for nobody
                    # In the same step as the turn: the history goes up to where the feed is,
                    # and the inbox gets everything after (as at a join).
                    inbox.reads_live()
                    joined_at = feed.last_seq
                    # Closed before the turn goes back: its consumer goes with it, so no more
                    # than the turns' reads hold consumers at once.
                    async with contextlib.aclosing(
                        fanout.history(job_id, start_seq, joined_at, turn)
                    ) as items:
                        async for item in items:
                            chunk = item.chunk_after_line(skip if item.seq == skip_seq else None)
                            sent = item.seq
                            if writer is not None and writer.gone:
                                return  # the client reset or left: nothing more can reach it
                            if chunk:
                                yield chunk
                            if item.terminal:
                                return
                            if inbox.overflow:
                                if failed_by_nats():
                                    yield nats_unavailable(retry_ms)
                                return
            except HistoryStalled:
                metrics.SSE_STREAMS_CUT.labels("history_stalled").inc()
                log.info("sse history read stalled; the client resumes", job_id=job_id)
                return
            except (nats.errors.Error, TimeoutError) as exc:
                # NATS busy or away: end without ``done``; the client resumes after what it got.
                metrics.SSE_STREAMS_CUT.labels("history_failed").inc()
                # str() too: a JetStream API error's repr drops its code and description.
                log.warning(
                    "sse history read failed; the client resumes",
                    error=repr(exc),
                    detail=str(exc),
                )
                if at_consumer_limit(exc):
                    yield consumer_limit_reached(retry_ms)
                else:
                    yield nats_unavailable(retry_ms)
                return

        def write_direct(batch: Batch) -> bool:
            nonlocal sent
            assert writer is not None
            if batch.terminal:
                return False  # the end goes out here, and ends the stream
            wire, last = _batch_wire(batch, sent, skip, skip_seq)
            if wire and not writer.write(wire):
                return False
            sent = last
            return True

        direct = write_direct if writer is not None else None
        while True:
            if told_silent != fanout.nats_silent:
                told_silent = fanout.nats_silent
                yield stale(told_silent)
            if not inbox.has_items and not inbox.overflow and not inbox.idle:
                # Everything before is written (a yield returns once the server wrote it), so
                # the feed may write what comes next itself until this stream is woken.
                inbox.direct = direct
                try:
                    await inbox.wakeup.wait()
                finally:
                    inbox.direct = None
            if inbox.idle and not inbox.has_items and not inbox.overflow:
                inbox.take()
                yield comment("keep-alive")
                continue
            if writer is not None and writer.gone:
                return  # the client reset or left: nothing more can reach it
            parts, sent, ended = _unsent(inbox.take(TAKE_BYTES), sent, skip, skip_seq)
            if parts:
                yield b"".join(parts)
            if ended:
                return
            if inbox.overflow:
                if failed_by_nats():
                    yield nats_unavailable(retry_ms)
                return
            if inbox.has_items:
                # The rest of a backlog next turn: a write that the socket takes at once does
                # not give the loop back, and the other streams' lines must not wait for it all.
                await asyncio.sleep(0)
    finally:
        feed.leave(inbox)
