"""Pending purges of artifact content, kept in JetStream so that no single API process owns one.

An external upload of a name writes content under a new nuid and, with its description, makes the
name serve it; the content it replaced (and any attempt of its own that never got served) must go
once no download reads it, and must not stay for ever because the API that took the upload died.
So every such content gets a record in the KV bucket ``<prefix>_artifact_purges`` (key: its
nuid) *before* anything could make it garbage:

- before each upload attempt writes a chunk: its own nuid, and the nuid the name serves now (the
  content it is about to replace), both *unconfirmed*: due ``UPLOAD_WINDOW_SECONDS`` later;
- once the upload's description is stored, the replaced content's record is *confirmed*: due one
  grace (``artifactstore.replaced_grace``) later, the time a download that read the old
  description needs to create its consumer.

Every API process sweeps the bucket at start and every ``artifact_purge_sweep_seconds``:

- an unconfirmed record past its due: the name still serves that nuid, so it is live content (the
  record goes); otherwise it is garbage since at least now: confirmed, due a grace from now;
- a confirmed record a grace past its due (the API that took the upload purges it itself at its
  due, ``artifactstore.purge_when_unread``; the sweep takes over only if it did not): taken with a
  compare-and-set of its revision (another API's sweep loses and leaves it), the name read
  again (a description stored late makes it live: the record goes), then purged if no consumer
  of the bucket reads it, and the record deleted; else looked at again a grace later.

A purge done twice is harmless (purging an empty subject), and a record is only ever purged once
the name serves something else, so the record can be written early and freely.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import msgspec
import nats.js.errors
import structlog
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from jobrunner.common import artifactstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names

log = structlog.get_logger()

# How long after its record an upload can still store the description that decides whether the
# recorded nuid is live or garbage: two uploads of one name at once may each take their patience
# (30 s) and a description's ack (5 s), and the later one may have read the name before the earlier
# one stored (so its description replaces content it never heard of: the earlier one's).
UPLOAD_WINDOW_SECONDS = 80.0


class PendingPurge(msgspec.Struct, frozen=True):
    object_name: str  # the name whose description decides whether the content is garbage
    due: float  # wall clock (epoch seconds): shared by every API process
    confirmed: bool  # the name served other content (or none) at least a grace before ``due``


async def ensure_bucket(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """File storage (a record outlives a NATS restart), one revision per key, the replicas and
    max age of the artifacts bucket itself (a record has no use once its chunks aged out)."""
    try:
        await js.stream_info(f"KV_{names.artifact_purges_bucket}")
    except nats.js.errors.NotFoundError:
        try:
            await js.create_key_value(
                bucket=names.artifact_purges_bucket,
                history=1,
                storage=api.StorageType.FILE,
                replicas=settings.stream_replicas,
                ttl=settings.stream_max_age_days * 86400 or None,
            )
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != artifactstore.STREAM_NAME_IN_USE:
                raise  # else another service starting now created it


async def _kv(js: JetStreamContext, names: Names) -> KeyValue:
    return await js.key_value(names.artifact_purges_bucket)


async def record(js: JetStreamContext, names: Names, nuid: str, object_name: str) -> None:
    """Content that is garbage unless ``object_name`` serves it once its upload is over."""
    entry = PendingPurge(object_name, time.time() + UPLOAD_WINDOW_SECONDS, confirmed=False)
    await (await _kv(js, names)).put(nuid, msgspec.json.encode(entry))


async def confirm(
    js: JetStreamContext, names: Names, nuid: str, object_name: str, grace: float
) -> None:
    """``object_name`` no longer serves ``nuid``: it goes a grace from now, once unread."""
    entry = PendingPurge(object_name, time.time() + grace, confirmed=True)
    await (await _kv(js, names)).put(nuid, msgspec.json.encode(entry))


async def forget(js: JetStreamContext, names: Names, nuid: str) -> None:
    """The purge of ``nuid`` is done."""
    await (await _kv(js, names)).delete(nuid)


async def sweep(js: JetStreamContext, names: Names, grace: float) -> None:
    """One pass over the pending purges (see the module's docstring)."""
    kv = await _kv(js, names)
    for key in await _keys(js, names):
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue  # done by another API meanwhile (a delete marker: KeyDeletedError)
        if entry.value is None or entry.revision is None:
            continue
        await _settle(js, names, kv, key, entry.revision, entry.value, grace)


async def _keys(js: JetStreamContext, names: Names) -> list[str]:
    """The records' keys, in one request (nats-py's ``KeyValue.keys`` reads a watcher's
    consumer with no timeout: a NATS restart mid-read would hang the sweep). Deleted records
    are listed too (their marker), and skipped by ``kv.get``. The server details up to 100,000
    subjects in one answer: far more pending purges than an installation has."""
    prefix = f"$KV.{names.artifact_purges_bucket}."
    info = await js.stream_info(f"KV_{names.artifact_purges_bucket}", subjects_filter=prefix + ">")
    return [subject.removeprefix(prefix) for subject in info.state.subjects or {}]


async def _settle(
    js: JetStreamContext,
    names: Names,
    kv: KeyValue,
    nuid: str,
    revision: int,
    value: bytes,
    grace: float,
) -> None:
    try:
        purge = msgspec.json.decode(value, type=PendingPurge)
    except msgspec.DecodeError:
        await kv.delete(nuid, last=revision)  # not ours to read: never written by jobrunner
        return
    now = time.time()
    if not purge.confirmed:
        if purge.due > now:
            return
        if await _served_nuid(js, names, purge.object_name) == nuid:
            await _quietly(kv.delete(nuid, last=revision))  # live content: nothing to purge
            return
        # Garbage since at least now: a download that read its description before has its
        # consumer within a grace.
        confirmed = PendingPurge(purge.object_name, now + grace, confirmed=True)
        await _quietly(kv.update(nuid, msgspec.json.encode(confirmed), last=revision))
        return
    if purge.due + grace > now:
        return  # the API that took the upload purges it at its due; taken over a grace later
    # Taken: another API's sweep now finds it due a grace later (or loses this compare-and-set).
    claimed = PendingPurge(purge.object_name, now, confirmed=True)
    if not await _quietly(kv.update(nuid, msgspec.json.encode(claimed), last=revision)):
        return
    log.info("artifact purge taken up", nuid=nuid)
    if await _served_nuid(js, names, purge.object_name) == nuid:
        # Its description came after all (stored late by a NATS that was frozen past the upload
        # window): live content.
        await kv.delete(nuid)
        return
    if await artifactstore.being_read(js, names, nuid):
        return  # a grace later, again
    await js.purge_stream(
        artifactstore.stream_name(names), subject=artifactstore.chunk_subject(names, nuid)
    )
    await _quietly(kv.delete(nuid))
    log.info("artifact chunks purged by the sweep", nuid=nuid)


async def _quietly(request: Awaitable[object]) -> bool:
    """A compare-and-set's result: False when another API changed the record first."""
    try:
        await request
    except nats.js.errors.KeyWrongLastSequenceError:
        return False
    except nats.js.errors.APIError as exc:
        if exc.err_code in (10071, 10164):  # wrong last sequence (a delete's, not translated)
            return False
        raise
    return True


async def _served_nuid(js: JetStreamContext, names: Names, object_name: str) -> str | None:
    try:
        return (await artifactstore.object_info(js, names, object_name)).nuid
    except artifactstore.ObjectMissing:
        return None


async def sweep_forever(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """The API's sweeper: at start, then every ``artifact_purge_sweep_seconds``; a failed pass
    (NATS away) is only logged: the records wait for the next one."""
    grace = artifactstore.replaced_grace(settings.artifact_read_idle_seconds)
    while True:
        try:
            await sweep(js, names, grace)
        except Exception as exc:
            log.warning("artifact purges not swept", error=repr(exc))
        await asyncio.sleep(settings.artifact_purge_sweep_seconds)
