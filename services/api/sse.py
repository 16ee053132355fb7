"""Server-Sent Events from JetStream.

The SSE ``id`` is the JetStream stream sequence of the event; a batched LineLogged message carries
several lines, so each line's id is ``<stream sequence>:<index in the batch>``. ``Last-Event-ID``
in either form resumes right after that event: nothing twice, nothing missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from contracts import codec, events
from services.api.context import ApiContext

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class ResumePoint:
    stream_seq: int
    line_index: int | None = None

    @classmethod
    def parse(cls, raw: str | None) -> ResumePoint | None:
        """``None`` for a missing or malformed header: the stream then starts from the beginning."""
        if not raw:
            return None
        seq, _, index = raw.strip().partition(":")
        try:
            point = cls(int(seq), int(index) if index else None)
        except ValueError:
            return None
        if point.stream_seq < 0 or (point.line_index is not None and point.line_index < 0):
            return None
        return point

    @property
    def next_seq(self) -> int:
        # Mid-batch: that message again (its earlier lines are skipped); else the one after.
        return self.stream_seq if self.line_index is not None else self.stream_seq + 1


def frame(data: Any, event: str | None = None, id: str | None = None) -> bytes:
    parts = []
    if id is not None:
        parts.append(f"id: {id}\n")
    if event is not None:
        parts.append(f"event: {event}\n")
    # JSON never contains a raw newline, so one data line is always enough.
    parts.append(f"data: {_encoder.encode(data).decode()}\n\n")
    return "".join(parts).encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def retry(ms: int) -> bytes:
    return f"retry: {ms}\n\n".encode()


def line_payload(line: events.LogLine) -> dict[str, Any]:
    return {
        "seq": line.seq,
        "stream": line.stream,
        "level": line.level,
        "timestamp": line.timestamp,
        "text": line.text,
    }


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
            return [
                frame(line_payload(line), id=f"{seq}:{i}")
                for i, line in enumerate(event.lines)
                if skip_lines_upto is None or i > skip_lines_upto
            ]
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


async def job_stream(
    ctx: ApiContext,
    job_id: str,
    start_seq: int,
    resume: ResumePoint | None,
    already_done: dict[str, Any] | None,
) -> AsyncIterator[bytes]:
    """Yield SSE frames for one job from ``start_seq`` until its terminal status."""
    yield retry(ctx.settings.sse_retry_ms)
    if already_done is not None:
        yield frame(already_done, event="done")
        return
    sub = await ctx.js.subscribe(
        ctx.names.job_subjects(job_id),
        stream=ctx.names.stream,
        ordered_consumer=True,
        config=api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
        ),
        pending_msgs_limit=50_000,
    )
    skip = resume.line_index if resume and resume.line_index is not None else None
    skip_seq = resume.stream_seq if skip is not None else None
    keepalive = ctx.settings.sse_keepalive_seconds
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=keepalive)
            except (NatsTimeoutError, TimeoutError):
                yield comment("keep-alive")
                continue
            seq = msg.metadata.sequence.stream
            try:
                event = codec.decode(msg.data)
            except msgspec.MsgspecError:
                continue
            if event is None:
                continue
            chunk = frames_for(event, seq, skip if seq == skip_seq else None)
            if chunk:
                yield b"".join(chunk)
            if isinstance(event, events.StatusChanged) and event.status.is_terminal:
                return
    finally:
        await asyncio.shield(sub.unsubscribe())
