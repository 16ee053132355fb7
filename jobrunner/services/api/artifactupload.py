"""An external job's worker attaches a file: from the HTTP body to an object and ArtifactStored.

The body is copied to a spooled temporary file as it arrives (at most 1 MiB in memory, the rest
on disk), counted against ``artifact_max_file_bytes`` and, with the job's files stored so far (as
the read model knows them), ``artifact_max_job_bytes``: a body over either is refused with
``413 ARTIFACT_TOO_LARGE`` as soon as it gets there, and nothing is stored. Then it is uploaded
like a runner's file (``artifactstore.put_file``) and announced with ``ArtifactStored`` before the
answer: a worker that got ``201`` and then reports its result finds the file listed.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import time
from collections.abc import AsyncIterator
from typing import IO

import msgspec
from nats.js import api

from jobrunner.common import artifactnames, artifactpurges, artifactstore, eventstore, retry
from jobrunner.contracts import events
from jobrunner.services.api.context import ApiContext
from jobrunner.services.api.errors import ApiError, try_again_later

SPOOL_MEMORY_BYTES = 1024 * 1024
# How long an upload waits for NATS (retrying) before the worker is told to send it again.
UPLOAD_PATIENCE_SECONDS = 30.0


class ArtifactAccepted(msgspec.Struct):
    job_id: str
    name: str
    size: int
    content_type: str
    sha256: str


def too_large(name: str, limit: int, setting: str) -> ApiError:
    return ApiError(
        413,
        "ARTIFACT_TOO_LARGE",
        f"The file {name!r} would be over {limit} bytes ({setting}); it was not stored.",
        limit=limit,
    )


def checked_name(name: str) -> str:
    try:
        return artifactnames.check_new_name(name)
    except artifactnames.BadArtifactName as exc:
        raise ApiError(400, "INVALID_ARTIFACT_NAME", f"That is no artifact name: {exc}.") from None


async def _spool(
    body: AsyncIterator[bytes], name: str, room: int, limit: int, setting: str
) -> tuple[IO[bytes], int]:
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    size = 0
    try:
        async for chunk in body:
            size += len(chunk)
            if size > room:
                raise too_large(name, limit, setting)
            await asyncio.to_thread(spool.write, chunk)
    except BaseException:
        spool.close()
        raise
    return spool, size


async def store_upload(
    ctx: ApiContext,
    job_id: str,
    name: str,
    body: AsyncIterator[bytes],
    declared_size: int | None,
    stored_bytes: int,
) -> ArtifactAccepted:
    """Store ``body`` as the job's artifact ``name`` (``stored_bytes``: its files so far)."""
    settings = ctx.settings
    file_room = settings.artifact_max_file_bytes
    job_room = settings.artifact_max_job_bytes - stored_bytes
    room = min(file_room, job_room)
    limit, setting = (
        (settings.artifact_max_file_bytes, "artifact_max_file_bytes")
        if file_room <= job_room
        else (settings.artifact_max_job_bytes, "artifact_max_job_bytes")
    )
    if declared_size is not None and declared_size > room:
        raise too_large(name, limit, setting)  # said up front: nothing need be read
    spool, size = await _spool(body, name, room, limit, setting)
    object_name = ctx.names.artifact_object(job_id, name)
    try:
        previous: api.ObjectInfo | None = await artifactstore.object_info(
            ctx.js, ctx.names, object_name
        )
    except artifactstore.ObjectMissing:
        previous = None
    deadline = time.monotonic() + UPLOAD_PATIENCE_SECONDS

    # Each attempt's content, and the content it is about to replace, are garbage unless the name
    # serves them once the upload is over: recorded in JetStream before any chunk, so that
    # neither is left for ever should this process die (artifactpurges).
    records = artifactpurges.UploadRecords(
        ctx.js,
        ctx.names,
        object_name,
        previous.nuid if previous is not None else None,
        ctx.settings.artifact_upload_window_seconds,
    )
    try:
        stored = await artifactstore.put_file(
            ctx.js,
            ctx.names,
            object_name,
            spool,
            size,
            lambda: time.monotonic() > deadline,
            replaces=previous.nuid if previous is not None else None,
            records=records,
        )
    except Exception as exc:
        if not isinstance(exc, artifactstore.UploadStopped) and not retry.is_transient(exc):
            raise ApiError(
                507,
                "ARTIFACT_NOT_STORED",
                f"NATS refused the file for good: {exc!r}.",
            ) from exc
        raise try_again_later(
            "EVENTS_UNAVAILABLE",
            "The artifact store (NATS) does not answer right now; send the file again shortly.",
            retry_after=2,
        ) from None
    finally:
        spool.close()
    if previous is not None:
        # The same name sent again: the earlier content's chunks go once no download reads them
        # (and the content that one replaced, should its purge have died with its API process).
        for replaced in (previous.nuid, artifactstore.replaced_nuid(previous)):
            if replaced is not None:
                artifactstore.purge_when_unread(
                    ctx.js,
                    ctx.names,
                    replaced,
                    artifactstore.replaced_grace(ctx.settings.artifact_read_idle_seconds),
                    object_name,
                )
    content_type = artifactnames.content_type(name)
    await _announce(ctx, job_id, name, object_name, content_type, stored, by=stored.nuid)
    await _announce_what_is_served(ctx, job_id, name, object_name, content_type, stored.nuid)
    return ArtifactAccepted(
        job_id=job_id,
        name=name,
        size=stored.size,
        content_type=content_type,
        sha256=stored.sha256,
    )


async def _announce(
    ctx: ApiContext,
    job_id: str,
    name: str,
    object_name: str,
    content_type: str,
    stored: artifactstore.StoredObject,
    by: str,
) -> None:
    """``ArtifactStored`` for ``stored``, published by the upload of object ``by``."""
    name_digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
    await eventstore.publish(
        ctx.js,
        ctx.names,
        events.ArtifactStored(
            job_id=job_id,
            # One id per object announced and upload announcing it (nuids): an id from the
            # content alone would be dropped as a duplicate when content sent earlier is sent
            # again after another, and the listing would keep the other.
            event_id=f"{job_id}-artifact-{name_digest}-{stored.nuid}"
            + ("" if by == stored.nuid else f"-by-{by}"),
            name=name,
            size=stored.size,
            content_type=content_type,
            sha256=stored.sha256,
            object_name=object_name,
        ),
    )


async def _announce_what_is_served(
    ctx: ApiContext, job_id: str, name: str, object_name: str, content_type: str, ours: str
) -> None:
    """Make the last ``ArtifactStored`` of the name describe the object the bucket serves.

    Two uploads of one name at once: the bucket keeps the description written last, the listing
    the event projected last, and the two orders may differ (one upload's description, the
    other's description and event, then the first one's event). So after announcing object
    ``announced``, read the description that is served; while it is another, announce that one
    too (its own upload may have announced it before ours). The last event in the stream then
    describes the last description: whoever published it read, after publishing, the object it
    announced; a description written later would have been read there, since its writer
    announces only after writing it. (Each event's id names the object and our upload: none is
    dropped as a duplicate of another upload's.)
    """
    announced = ours
    deadline = time.monotonic() + UPLOAD_PATIENCE_SECONDS
    while True:
        try:
            served = await _served(ctx, object_name, deadline)
        except artifactstore.ObjectMissing:
            return
        sha256 = artifactstore.sha256_of(served)
        if served.nuid == announced or sha256 is None:
            return
        if announced == ours:
            # Our content was replaced already (by an upload that may have read the one before
            # ours as the content it replaced): its chunks go like replaced content's.
            artifactstore.purge_when_unread(
                ctx.js,
                ctx.names,
                ours,
                artifactstore.replaced_grace(ctx.settings.artifact_read_idle_seconds),
                object_name,
            )
        await _announce(
            ctx,
            job_id,
            name,
            object_name,
            content_type,
            artifactstore.StoredObject(size=served.size or 0, sha256=sha256, nuid=served.nuid),
            by=ours,
        )
        announced = served.nuid


async def _served(ctx: ApiContext, object_name: str, deadline: float) -> api.ObjectInfo:
    """The object's description, asked again while NATS does not answer, until ``deadline``
    (then the error: the worker is told to send the file again, and that upload announces what
    is served)."""
    failures = 0
    while True:
        try:
            return await artifactstore.object_info(ctx.js, ctx.names, object_name)
        except artifactstore.ObjectMissing:
            raise
        except Exception as exc:
            failures += 1
            if not retry.is_transient(exc) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(retry.delay_after(failures))
