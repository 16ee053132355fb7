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
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api

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


def _start_config(start_seq: int | None, start_time: datetime | None) -> api.ConsumerConfig:
    # A start time past the last message makes the server start at that message, so the readers
    # below also drop anything stored before ``start_time``.
    if start_time is not None:
        return api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME,
            opt_start_time=start_time,
        )
    return api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start_seq or 1, 1)
    )


async def read_events(
    js: JetStreamContext,
    names: Names,
    job_id: str | None = None,
    start_seq: int | None = None,
    start_time: datetime | None = None,
    limit: int = 100,
) -> list[StoredEvent]:
    """Up to ``limit`` stored events from ``start_seq`` (or ``start_time``), oldest first."""
    sub = await js.subscribe(
        subject_filter(names, job_id),
        stream=names.stream,
        ordered_consumer=True,
        config=_start_config(start_seq, start_time),
        pending_msgs_limit=max(limit * 2, 1000),
    )
    out: list[StoredEvent] = []
    try:
        # A push consumer delivers at once, so pending alone shrinks while we look; pending plus
        # delivered (one snapshot) is everything from the start on.
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        wanted = min(limit, (info.num_pending or 0) + (delivered or 0))
        while len(out) < wanted:
            msg = await sub.next_msg(timeout=_READ_TIMEOUT)
            stored = stored_event(msg)
            if start_time is None or stored.time >= start_time:
                out.append(stored)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await asyncio.shield(sub.unsubscribe())
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
    sub = await js.subscribe(
        subject_filter(names, job_id),
        stream=names.stream,
        ordered_consumer=True,
        config=_start_config(start_seq, start_time),
        pending_msgs_limit=50_000,
    )
    try:
        while stop is None or not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                continue
            stored = stored_event(msg)
            if start_time is None or stored.time >= start_time:
                yield stored
    finally:
        await asyncio.shield(sub.unsubscribe())
