"""Events the projector cannot apply are set aside, never retried forever (invariant 9).

A batch that fails on its data is split in halves until the failing event is alone; that event
is recorded in ``projector_failures`` (with the error and the stored message, cut to
``RAW_LIMIT``), the checkpoint moves past it in the same transaction, and the rest is applied.
An outage (the connection to Postgres lost, a server shutting down) is no data error: it is
raised, and the caller retries the same batch later; nothing is set aside for it.

The live projector and a replay go through here alike, so they set aside the same events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import structlog

from jobrunner.common import metrics
from jobrunner.common.database import READ_SCHEMA
from jobrunner.services.projector import storable, store
from jobrunner.services.projector.projections import Change, Unreadable

log = structlog.get_logger()

RAW_LIMIT = 4096  # characters of the stored message kept with a failure
ERROR_LIMIT = 1000  # characters of the error text

# Errors that come from the data of an event: applying the same event again fails again.
# (asyncpg reports an argument it cannot encode as a ValueError; Postgres reports values it
# cannot store as class 22 "data exception", constraint failures as class 23, and sizes and
# depths beyond its limits as class 54.) Anything else, a lost connection above all, is an
# outage and is retried.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    msgspec.MsgspecError,
    ValueError,
    OverflowError,
)

Batch = list[tuple[int, list[Change]]]


class StoredMessage(msgspec.Struct, frozen=True):
    """What the stream holds at a sequence, as far as a failure record needs it."""

    subject: str | None
    data: bytes


# Looks a message up by stream sequence (JetStream's direct get): only when one is set aside.
MessageLookup = Callable[[int], Awaitable[StoredMessage | None]]


def is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, DATA_ERRORS)


async def apply(
    conn: asyncpg.Connection,
    batch: Batch,
    lookup: MessageLookup,
    schema: str = READ_SCHEMA,
    writing: Callable[[], None] | None = None,
    committed: int | None = None,
) -> int:
    """Apply ``batch`` (see ``store.apply_batch``, and its ``writing`` and ``committed``),
    setting aside each event that cannot be. Raises only what is not a data error.

    Returns a checkpoint at least the batch's last sequence. When the batch went in whole (in one
    transaction, nothing set aside), it is the checkpoint that transaction committed, or the one
    it found under the lock when the stored checkpoint already covered the batch (another
    projector applied it): never one that another projector committed after this call's
    transaction, so it is this projector's own position (what ``CheckpointBehind``, the
    ``ProjectedNotice`` and the checkpoint gauge mean). After a set-aside it is the stored
    checkpoint read afterwards, which another projector may have moved further on since."""
    start = 0
    # Messages that are no readable event are set aside without trying them.
    for i, (seq, changes) in enumerate(batch):
        # The feed gives an unreadable message this one change, alone: only the first of each
        # event's changes is looked at (asked per event, a million times in a replay).
        if changes and type(unreadable := changes[0]) is Unreadable:
            await _bisect(conn, batch[start:i], lookup, schema, writing, committed)
            await _set_aside(conn, seq, unreadable.error, lookup, schema, committed)
            start = i + 1
    whole = await _bisect(conn, batch[start:], lookup, schema, writing, committed)
    if start == 0 and whole is not None:
        # Applied in one transaction, nothing set aside: the checkpoint it left, not read again
        # (a round trip a batch that the replay's loading waits on).
        return whole
    return await store.checkpoint(conn, schema)


async def _bisect(
    conn: asyncpg.Connection,
    batch: Batch,
    lookup: MessageLookup,
    schema: str,
    writing: Callable[[], None] | None,
    committed: int | None = None,
) -> int | None:
    """The checkpoint ``store.apply_batch`` left when the batch went in whole, else None."""
    if not batch:
        return None
    try:
        return await store.apply_batch(conn, batch, schema, writing, committed)
    except Exception as exc:
        if not is_data_error(exc):
            raise
        if len(batch) == 1:
            await _set_aside(conn, batch[0][0], _describe(exc), lookup, schema, committed)
            return None
    middle = len(batch) // 2
    await _bisect(conn, batch[:middle], lookup, schema, writing, committed)
    await _bisect(conn, batch[middle:], lookup, schema, writing, committed)
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT]


async def _set_aside(
    conn: asyncpg.Connection,
    seq: int,
    error: str,
    lookup: MessageLookup,
    schema: str,
    committed: int | None,
) -> None:
    """Record the event at ``seq`` as not applied and move the checkpoint past it (not when the
    stored checkpoint is behind ``committed``: ``store.CheckpointBehind``)."""
    message = await lookup(seq)
    raw = message.data if message is not None else b""
    event_type, job_id = _probe(raw)
    async with conn.transaction():
        if seq <= await store.lock_checkpoint(conn, schema, committed):
            return  # applied or set aside already (a second projector, a retried batch)
        await conn.execute(
            f"INSERT INTO {schema}.projector_failures "
            "(stream_seq, subject, event_type, job_id, error, raw) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream_seq) DO NOTHING",
            seq,
            storable.optional_text(message.subject if message is not None else None),
            event_type,
            job_id,
            storable.text(error),
            storable.text(raw[: RAW_LIMIT * 4].decode("utf-8", errors="replace")[:RAW_LIMIT]),
        )
        await conn.execute(f"UPDATE {schema}.checkpoint SET last_seq = $1 WHERE id = 1", seq)
    if schema == READ_SCHEMA:  # a replay's rebuild sets the same events aside again
        metrics.PROJECTOR_SET_ASIDE.inc()
    log.error(
        "event set aside: the projector could not apply it",
        stream_seq=seq,
        event_type=event_type,
        job_id=job_id,
        error=error,
    )


_probe_decoder = msgspec.json.Decoder(dict[str, Any])


def _probe(raw: bytes) -> tuple[str | None, str | None]:
    """The event's type and job id, if the message is a JSON object that has them."""
    try:
        fields = _probe_decoder.decode(raw)
    except (msgspec.MsgspecError, RecursionError):  # msgspec's error for JSON nested too deeply
        # Raised, it would fail the set-aside itself, and the projector would retry it forever.
        return None, None
    kind, job_id = fields.get("type"), fields.get("job_id")
    return (
        storable.text(kind)[:200] if isinstance(kind, str) else None,
        storable.text(job_id)[:200] if isinstance(job_id, str) else None,
    )
