"""The raw event history, read back from JetStream: for auditors, the API and ``jobrunner events``.

Reads use short-lived ordered consumers (no state on the server after they end) and return each
stored message as it is: stream sequence, subject, the time JetStream stored it, and the event's
JSON exactly as published, including event types and fields this version does not know.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jobrunner.common.subscription import ordered_reader
from jobrunner.contracts.names import Names

# A job id as it may appear in a subject token: no '.', no wildcards, no whitespace.
# \Z, not $: "$" also matches before a final line break.
JOB_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
_READ_TIMEOUT = 10.0


class StoredEvent(msgspec.Struct):
    stream_seq: int
    subject: str
    time: datetime
    event: Any


def stored_event(msg: Msg) -> StoredEvent:
    try:
        body: Any = msgspec.json.decode(msg.data)
    except (msgspec.DecodeError, RecursionError):  # msgspec raises the latter on deep nesting
        body = {"undecodable": msg.data.decode("utf-8", "replace")}
    return StoredEvent(
        stream_seq=msg.metadata.sequence.stream,
        subject=msg.subject,
        time=msg.metadata.timestamp,
        event=body,
    )


def subject_filter(names: Names, job_id: str | None) -> str:
    if job_id is None:
        return names.all_subjects
    if not JOB_ID_RE.match(job_id):
        raise ValueError(f"{job_id!r} is not a job id")
    return names.job_subjects(job_id)


async def read_events(
    js: JetStreamContext,
    names: Names,
    job_id: str | None = None,
    start_seq: int | None = None,
    start_time: datetime | None = None,
    limit: int = 100,
) -> list[StoredEvent]:
    """Up to ``limit`` stored events from ``start_seq`` (or ``start_time``), oldest first."""
    out: list[StoredEvent] = []
    async with ordered_reader(
        js, names.stream, subject_filter(names, job_id), start_seq, start_time
    ) as reader:
        # Everything from the start on, as the server counts it now: the read stops there
        # rather than wait for events that may never come.
        wanted = min(limit, await reader.count())
        seen = 0
        while seen < wanted:
            msgs = await reader.next_batch(_READ_TIMEOUT)
            if not msgs:
                raise TimeoutError(f"no event from JetStream for {_READ_TIMEOUT} s")
            for msg in msgs:
                seen += 1
                stored = stored_event(msg)
                if start_time is None or stored.time >= start_time:
                    out.append(stored)
                if seen >= wanted or msg.metadata.num_pending == 0:
                    return out
    return out


async def follow_events(
    js: JetStreamContext,
    names: Names,
    job_id: str | None = None,
    start_seq: int | None = None,
    start_time: datetime | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[StoredEvent]:
    """Every stored event from the start on, then new ones as they arrive, until ``stop``."""
    async with ordered_reader(
        js, names.stream, subject_filter(names, job_id), start_seq, start_time
    ) as reader:
        while stop is None or not stop.is_set():
            # A short wait, so that ``stop`` is noticed soon on a quiet stream.
            for msg in await reader.next_batch(1.0):
                stored = stored_event(msg)
                if start_time is None or stored.time >= start_time:
                    yield stored
