"""The artifacts object store: files written in chunks from a file, read back in chunks.

Objects use the layout of NATS object stores (stream ``OBJ_<bucket>``, chunks on
``$O.<bucket>.C.<nuid>``, the object's description on ``$O.<bucket>.M.<base64 name>``), so the
``nats object`` command and other clients read them too. Two parts are written here rather than
taken from nats-py's ``ObjectStore``:

- ``put`` waits for each chunk's ack before it sends the next (about one round trip per 128 KiB);
  here chunks travel in a pipeline, their acks taken by the connection's ack inbox (``ackinbox``:
  a refusal raises at once; an ack lost with a NATS restart fails at the reconnect). Should any
  chunk fail (NATS away, a timeout), the whole object starts again under a new nuid (a chunk
  published again could land after its successors), then one chunk at a time; a refusal for
  good (the bucket full) is not tried again.
  The object becomes visible only with its description, written last; the chunks of an attempt
  that never got one are purged when possible and otherwise age out with the bucket's max age.
- ``get`` collects the whole object in memory; here chunks come from a pull consumer a few at a
  time, so serving a file of any size takes a bounded amount of memory, and a read from byte N
  (a resumed download) starts at the chunk that holds it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import IO, Any, NamedTuple, Protocol

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.object_store import ObjectStore

from jobrunner.common import ackinbox, messagesize, retry, stopping
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names

log = structlog.get_logger()

# In an object's description: the nuid of the content it replaced (see purge_when_unread).
REPLACES_HEADER = "Jobrunner-Replaces"
CHUNK_BYTES = 128 * 1024  # nats-py's and the Go client's default chunk size
PIPELINE_CHUNKS = 16  # chunks in flight while uploading (2 MiB)
ACK_WAIT_SECONDS = 5.0
READ_BATCH_CHUNKS = 8  # per download: chunks asked for at a time (1 MiB)
# How long one download request waits for chunks. Not the whole idle limit: a request that got a
# chunk before NATS went silent returns what it has only at the end of its wait (nats-py), so a
# silence that began mid-request would count from the next request on (up to twice the limit).
# The limit counts the waits of the requests that got nothing; this bounds its error.
READ_WAIT_SECONDS = 1.0
# After an empty answer that came before the request's wait was over (a status, not a wait).
EMPTY_ANSWER_PAUSE_SECONDS = 0.1


# JetStream answers 503 for a stream at its limits too; that will not pass by retrying the same
# upload (10077: the stream's max bytes reached; 10047: no storage left on the server).
_FULL_ERROR_CODES = frozenset({10047, 10077})


def _bucket_full(exc: BaseException) -> bool:
    return isinstance(exc, nats.js.errors.APIError) and exc.err_code in _FULL_ERROR_CODES


class StoredObject(msgspec.Struct, frozen=True):
    size: int
    sha256: str  # hex
    nuid: str  # the object's chunks are on $O.<bucket>.C.<nuid>


class UploadStopped(Exception):
    """The upload was given up because ``should_stop`` said so (the job's lease is lost)."""


class ObjectMissing(Exception):
    """No such object in the bucket (never stored, or aged out)."""


class ReadStalled(Exception):
    """NATS sent no chunk of the object for longer than the read's idle limit."""


def stream_name(names: Names) -> str:
    return f"OBJ_{names.artifacts_bucket}"


def chunk_subject(names: Names, nuid: str) -> str:
    return f"$O.{names.artifacts_bucket}.C.{nuid}"


def _meta_subject(names: Names, object_name: str) -> str:
    encoded = base64.urlsafe_b64encode(object_name.encode("utf-8")).decode()
    return f"$O.{names.artifacts_bucket}.M.{encoded}"


# JetStream's refusal to create a stream that exists with another configuration.
STREAM_NAME_IN_USE = 10058


async def ensure_bucket(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """Create the artifacts bucket: file storage, replicas and max age like the event stream's
    (artifacts last as long as the events that name them)."""
    try:
        await js.stream_info(stream_name(names))
    except nats.js.errors.NotFoundError:
        try:
            await js.create_object_store(
                names.artifacts_bucket,
                config=api.ObjectStoreConfig(
                    description="jobrunner job artifacts",
                    storage=api.StorageType.FILE,
                    replicas=settings.stream_replicas,
                    ttl=settings.stream_max_age_days * 86400 or None,
                ),
            )
        except nats.js.errors.BadRequestError as exc:
            # Another service starting at the same time created it and already gave it its
            # consumer limit, so this create's config differs: the bucket is there.
            if exc.err_code != STREAM_NAME_IN_USE:
                raise


class AttemptRecords(Protocol):
    """An upload's pending-purge records (``artifactpurges.UploadRecords``), kept by the API for
    external uploads so that no content is left for ever should the API die."""

    async def attempt(self, nuid: str) -> None:
        """Before the attempt writes its first chunk."""

    async def writing(self, nuid: str) -> None:
        """Between the attempt's chunks (renews its record now and then); :class:`AttemptTaken`
        if the attempt is no longer this upload's."""

    async def describing(self, nuid: str) -> None:
        """Right before its description is published; :class:`AttemptTaken` if the attempt is
        no longer this upload's to describe."""

    async def described(self, nuid: str, size: int) -> None:
        """Once its description is acknowledged; :class:`AttemptTaken` if the name serves it
        yet its chunks were purged meanwhile."""


class AttemptTaken(UploadStopped):
    """Another API's sweep took the attempt's content as garbage (this API stalled past the
    upload window before the fence): it must not be described (or, described after a stall of
    the describing window, the name serves it with no chunks left: the file must be sent
    again)."""


async def put_file(
    js: JetStreamContext,
    names: Names,
    object_name: str,
    source: IO[bytes],
    size: int,
    should_stop: Callable[[], bool],
    replaces: str | None = None,
    records: AttemptRecords | None = None,
) -> StoredObject:
    """Store the first ``size`` bytes of ``source`` (a seekable binary file) as ``object_name``.

    Transient NATS errors start the object again from the file's start, for as long as
    ``should_stop()`` is false (then :class:`UploadStopped`); a permanent one raises.
    ``replaces``: the nuid of the content this one replaces, kept in the description (the
    ``Jobrunner-Replaces`` header) so that the next upload of the name can purge it should the
    purge scheduled now never run (the API killed before it).
    ``records``: told of each attempt before its first chunk and before its description (see
    :class:`AttemptRecords`); their failure is the attempt's. With records, an attempt whose
    description was sent but not acknowledged is not purged here: NATS may store it yet (a
    server that answers late), and the sweep purges the content only if the name does not serve
    it once its record is due (``artifactpurges.DESCRIBING_WINDOW_SECONDS`` after the fence).
    """
    failures = 0
    while True:
        if should_stop():
            raise UploadStopped(object_name)
        source.seek(0)
        nuid = uuid.uuid4().hex
        described = False  # its description sent: it may be stored even without an ack
        in_flight: list[asyncio.Future[Msg]] = []  # its chunks sent, their acks not yet read
        try:
            if records is not None:
                await records.attempt(nuid)
            # Pipelined at first; one chunk at a time after a failure (from when nats-py's
            # pipeline left a refused publish's ack unanswered: the ack inbox raises the
            # refusal, a full bucket, in the pipeline too, so this is only fewer chunks sent
            # into an outage).
            stored, info = await _put_chunks(
                js,
                names,
                object_name,
                source,
                size,
                nuid,
                should_stop,
                failures == 0,
                replaces,
                in_flight,
                records,
            )
            description = _description(js, info)
            if records is not None:
                await records.describing(nuid)
            described = True
            await _describe(js, names, object_name, description)
        except UploadStopped:
            purge_later(js, names, nuid, in_flight)
            raise
        except Exception as exc:
            permanent = not retry.is_transient(exc) or _bucket_full(exc)
            if described and records is not None:
                log.warning("artifact description not acknowledged", nuid=nuid)
            elif permanent:
                await _settled(in_flight)
                await _purge(js, names, nuid)
            else:
                purge_later(js, names, nuid, in_flight)
            if permanent:
                raise
            failures += 1
            log.warning(
                "artifact upload interrupted, starting it again",
                object=object_name,
                error=repr(exc) or type(exc).__name__,
            )
            await asyncio.sleep(retry.delay_after(failures))
            continue
        except BaseException:
            _settled_now(in_flight)  # cancelled: no purge, the acks abandoned
            raise
        if records is not None:
            await records.described(nuid, stored.size)
        return stored


async def has_chunks(js: JetStreamContext, names: Names, nuid: str) -> bool:
    try:
        await js.get_last_msg(stream_name(names), chunk_subject(names, nuid))
    except nats.js.errors.NotFoundError:
        return False
    return True


async def _put_chunks(
    js: JetStreamContext,
    names: Names,
    object_name: str,
    source: IO[bytes],
    size: int,
    nuid: str,
    should_stop: Callable[[], bool],
    pipelined: bool,
    replaces: str | None,
    in_flight: list[asyncio.Future[Msg]],
    records: AttemptRecords | None,
) -> tuple[StoredObject, api.ObjectInfo]:
    """Write the attempt's chunks; what it stored and the description to publish.
    ``in_flight``: the acks of the chunks sent and not yet acknowledged; what it holds when
    this raises is the caller's to settle (``_settled``) before the attempt's purge.
    ``records``: told before each chunk (``writing``)."""
    subject = chunk_subject(names, nuid)
    digest = hashlib.sha256()
    # Through the connection's ack inbox, as every other publish: a chunk's ack a NATS restart
    # lost fails at the reconnect (``AckLostWithConnection``) and the attempt starts again now,
    # not after its ack wait; a refusal (the bucket full) raises from the pipeline too.
    inbox = ackinbox.of(js._nc)
    total = chunks = 0
    while total < size:
        if should_stop():
            # Checked at every chunk: NATS may answer again after the lease has lapsed.
            raise UploadStopped(object_name)
        if records is not None:
            await records.writing(nuid)
        data = await asyncio.to_thread(source.read, min(CHUNK_BYTES, size - total))
        if not data:
            break  # the file got shorter since its size was taken: store what is there
        digest.update(data)
        total += len(data)
        chunks += 1
        if not pipelined:
            await inbox.publish_headed(subject, data, None, ACK_WAIT_SECONDS)
            continue
        in_flight.append(await inbox.publish_pipelined(subject, data, None))
        if len(in_flight) >= PIPELINE_CHUNKS:
            await _chunk_acked(in_flight.pop(0))
    while in_flight:
        await _chunk_acked(in_flight.pop(0))
    info = api.ObjectInfo(
        name=object_name,
        bucket=names.artifacts_bucket,
        nuid=nuid,
        size=total,
        chunks=chunks,
        mtime=datetime.now(UTC).isoformat(),
        digest="SHA-256=" + base64.urlsafe_b64encode(digest.digest()).decode(),
        options=api.ObjectMetaOptions(max_chunk_size=CHUNK_BYTES),
        headers={REPLACES_HEADER: [replaces]} if replaces else None,
    )
    return StoredObject(size=total, sha256=digest.hexdigest(), nuid=nuid), info


async def _settled(in_flight: list[asyncio.Future[Msg]]) -> None:
    """Wait until each chunk still in flight is stored (its ack came) or refused, for
    ``ACK_WAIT_SECONDS`` at most, then abandon the rest. A given-up attempt's purge waits for
    this: JetStream stores a stream's messages apart from its API requests, so a purge sent
    while a chunk is in flight may run before that chunk is stored and leave it (seen in about
    half the attempts stopped mid-pipeline), and a runner's attempt has no record for the sweep
    to purge it again: it stayed for the bucket's max age (by default for ever). A chunk whose
    ack does not come in time (NATS away) may still land after the purge: an external upload's
    record has the sweep purge again; a runner's is left to the max age."""
    try:
        if in_flight:
            await asyncio.wait(in_flight, timeout=ACK_WAIT_SECONDS)
    finally:
        _settled_now(in_flight)


def _settled_now(in_flight: list[asyncio.Future[Msg]]) -> None:
    """The acks not come are abandoned (their inbox entries go with their futures); a failure
    already there read, not asyncio's "never retrieved" at exit."""
    for future in in_flight:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()
    in_flight.clear()


async def _chunk_acked(future: asyncio.Future[Msg]) -> None:
    """A pipelined chunk's ack, within ``ACK_WAIT_SECONDS`` (then ``asyncio.wait_for``'s
    built-in ``TimeoutError``, not nats-py's); JetStream's refusal raised as its ``APIError``."""
    # Wall time on purpose: an ack missed because the loop was blocked costs only a retried
    # attempt of the upload (purged and written again), never a server counted gone.
    ackinbox.read_ack(await asyncio.wait_for(future, ACK_WAIT_SECONDS))


class _Description(msgspec.Struct, frozen=True):
    payload: bytes
    headers: dict[str, str]


def _description(js: JetStreamContext, info: api.ObjectInfo) -> _Description:
    """The object's description message, checked to fit NATS's message size (its size follows
    the name) before anything is sent."""
    payload = json.dumps(info.as_dict()).encode()
    # The description replaces any earlier one of the same name (rollup).
    headers: dict[str, str] = {api.Header.ROLLUP: "sub", api.Header.MSG_ID: f"{info.nuid}.meta"}
    messagesize.check_fits(js._nc, payload, headers)
    return _Description(payload, headers)


async def _describe(
    js: JetStreamContext, names: Names, object_name: str, description: _Description
) -> None:
    """Publish the object's description: from now on the name serves its content."""
    await ackinbox.of(js._nc).publish_headed(
        _meta_subject(names, object_name),
        description.payload,
        description.headers,
        ACK_WAIT_SECONDS,
    )


class _Owner(NamedTuple):
    js: JetStreamContext  # whose connection the purge uses
    # Set before the purge's cancel (``stop_purges``): a cancel can be lost with a JetStream
    # reply (3.11's wait_for), and the purge would look on for as long as someone reads.
    stop: asyncio.Event


_PURGES: set[asyncio.Task[None]] = set()
_OWNERS: dict[asyncio.Task[None], _Owner] = {}  # every purge task


def _start_purge(
    js: JetStreamContext,
    nuid: str,
    purge: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
) -> asyncio.Task[None]:
    """``purge(stop)`` in a task of its own, which ``stop_purges`` ends."""
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(purge(stop), name=f"artifact-purge-{nuid}")
    _OWNERS[task] = _Owner(js, stop)
    task.add_done_callback(lambda done: _OWNERS.pop(done, None))
    return task


def purge_later(
    js: JetStreamContext, names: Names, nuid: str, in_flight: list[asyncio.Future[Msg]]
) -> None:
    """Best effort, in the background: once the chunks ``in_flight`` are stored or lost
    (``_settled``) and NATS answers, the chunks of an attempt that will never get a description
    go. Its pending-purge record, if it has one, stays: a chunk whose ack did not come in time
    may be stored after this purge, and the sweep purges again after the upload window."""

    async def purge(stop: asyncio.Event) -> None:
        await _settled(in_flight)
        await _purge(js, names, nuid, patient=True, stop=stop)

    task = _start_purge(js, nuid, purge)
    _PURGES.add(task)  # a task nobody references may be collected before it ran
    task.add_done_callback(_PURGES.discard)
    # A task cancelled before its first step never enters ``_settled``'s ``finally``.
    task.add_done_callback(lambda _: _settled_now(in_flight))


# How long the API's shutdown waits for a purge after its stop: the rest of the look it may be in
# (a cancel lost with a reply lets the look finish: two JetStream requests of nats-py's 5 s
# timeout when the stream has at most 256 consumers), and 2 s for a loaded event loop. Past it
# the purge is left, and logged; the connection's close ends it, and the sweep purges later.
PURGE_STOP_SECONDS = 12.0


async def stop_purges(js: JetStreamContext, within: float | None = None) -> None:
    """Stop the purges still waiting on ``js`` (its connection is about to close: they could
    only fail from now on) and wait until they have stopped, ``within`` seconds at most
    (``PURGE_STOP_SECONDS``).
    What a replaced content's purge leaves: see ``purge_when_unread``. A ``purge_later``'s
    chunks are orphaned: no description names them, so only the bucket's max age removes
    them."""
    within = PURGE_STOP_SECONDS if within is None else within
    owned = [(task, owner.stop) for task, owner in list(_OWNERS.items()) if owner.js is js]
    await asyncio.gather(*(stopping.end_loop(task, stop, within=within) for task, stop in owned))


PURGE_ATTEMPTS = 60  # NATS failures in a row before a purge gives up (a minute or more)


async def _purge(
    js: JetStreamContext,
    names: Names,
    nuid: str,
    patient: bool = False,
    stop: asyncio.Event | None = None,
) -> bool:
    """Remove the chunks of an attempt that got no description (or of an object replaced);
    whether that was done. A ``patient`` one tries again until ``stop`` is set."""
    for attempt in range(PURGE_ATTEMPTS if patient else 1):
        if stop is not None and stop.is_set():
            return False
        try:
            await js.purge_stream(stream_name(names), subject=chunk_subject(names, nuid))
            return True
        except Exception as exc:
            if not patient or _for_good(exc):
                log.warning("artifact chunks not purged", nuid=nuid, error=repr(exc))
                return False
            delay = retry.delay_after(attempt + 1, longest=5.0)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                await stopping.pause(stop, delay)
    return False


def _for_good(exc: BaseException) -> bool:
    """A purge's request that will never pass: a permanent error, or the connection closed (for
    a request, which may meet a reconnecting one, that is transient; a background task on a
    closed connection would only fail again)."""
    return isinstance(exc, nats.errors.ConnectionClosedError) or not retry.is_transient(exc)


_REPLACED_PURGES: dict[str, asyncio.Task[None]] = {}
# The longest a download takes from reading a description to its consumer's creation: one
# JetStream request (nats-py's 5 s timeout) and a margin for the event loop (a heuristic: a
# starved event loop can take longer).
DESCRIPTION_TO_CONSUMER_SECONDS = 6.0


def replaced_grace(idle_seconds: float) -> float:
    """How long replaced content is kept at least: a download that read its description has
    created its consumer by then (and ``idle_seconds`` at least, as before)."""
    return max(idle_seconds, DESCRIPTION_TO_CONSUMER_SECONDS)


def purge_when_unread(
    js: JetStreamContext, names: Names, nuid: str, grace: float, object_name: str | None = None
) -> None:
    """In the background: the chunks of replaced content go once nobody can be reading them.

    A download reads through a consumer of its own filtered on the content's chunk subject
    (``read_chunks``; a resumed one walks the chunks' sizes through another one first, kept
    until the read ends, ``resume_point``; the ZIP archive guards every member from its
    description on, ``ReadGuards``), which lives on the server: whichever API process serves it,
    and gone by itself within its inactive threshold should that process die. So the purge waits
    ``grace`` (``replaced_grace``: longer than a download takes from reading the description to
    its consumer's creation, so a download that read the old description has its consumer by
    then), then for as long as any consumer of the bucket filters on that subject, and only then
    purges. A download that started on the old content thus ends whole; one that starts later
    reads the new description. Consumers with no filter or a wildcard one are not seen as
    readers (jobrunner makes none on the bucket).
    Stops when the consumers cannot be listed for good (a permanent error, the connection
    closed) or ``PURGE_ATTEMPTS`` times in a row, and at the API's shutdown (``stop_purges``);
    what it leaves, like content whose purge died with its API process, the next upload of the
    name purges (``replaced_nuid``), else the bucket's max age.
    ``object_name``: the name that no longer serves ``nuid``; its pending-purge record
    (``artifactpurges``) is confirmed first and removed once purged, and what this task leaves
    (the API killed or stopped, NATS away too long) every API's sweep takes up."""
    if nuid in _REPLACED_PURGES:
        return  # already waiting here
    task = _start_purge(
        js, nuid, lambda stop: _purge_when_unread(js, names, nuid, grace, object_name, stop)
    )
    _REPLACED_PURGES[nuid] = task
    task.add_done_callback(lambda _: _REPLACED_PURGES.pop(nuid, None))


async def _purge_when_unread(
    js: JetStreamContext,
    names: Names,
    nuid: str,
    grace: float,
    object_name: str | None,
    stop: asyncio.Event,
) -> None:
    # Imported here: artifactpurges builds on this module.
    from jobrunner.common import artifactpurges

    subject = chunk_subject(names, nuid)
    revision = None  # of the record confirmed here
    if object_name is not None:
        try:
            revision = await artifactpurges.confirm(js, names, nuid, object_name, grace)
        except Exception as exc:  # the sweep confirms it after its upload window
            log.warning("artifact purge not confirmed", nuid=nuid, error=repr(exc))
    failures = 0
    while True:
        await stopping.pause(stop, grace)
        if stop.is_set():
            return  # the API's shutdown: what is left here the sweep takes up
        log.info("artifact readers looked for", nuid=nuid)
        try:
            if not await _being_read(js, names, subject):
                break
            failures = 0
        except Exception as exc:
            failures += 1
            if _for_good(exc) or failures >= PURGE_ATTEMPTS:
                log.warning("artifact chunks not purged", nuid=nuid, error=repr(exc))
                return
            log.warning("artifact readers not listed", nuid=nuid, error=repr(exc))
    if await _purge(js, names, nuid, patient=True, stop=stop) and revision is not None:
        try:
            await artifactpurges.remove(js, names, nuid, revision)
        except Exception as exc:  # the sweep purges it again (harmless) and removes it
            log.warning("artifact purge record not removed", nuid=nuid, error=repr(exc))


async def being_read(js: JetStreamContext, names: Names, nuid: str) -> bool:
    """Whether any consumer of the bucket reads ``nuid``'s chunks (see ``_being_read``)."""
    return await _being_read(js, names, chunk_subject(names, nuid))


LIST_SCANS = 5  # scans of the consumer list before one that nothing changed under is given up
LIST_PAGE = 256  # consumers the server sends a page of the list (JSApiListLimit)


async def _being_read(js: JetStreamContext, names: Names, subject: str) -> bool:
    """Whether any consumer of the bucket reads ``subject``.

    The list comes in pages by offset: a consumer deleted between two pages moves a later one
    onto the page already read, which would be missed (even when the next page comes back
    empty: 257 consumers, one deleted after the first page, the 257th is now at 255). So a scan
    counts only when it is a single page shorter than the server's page (one reply: the whole
    list at one moment), or the bucket's consumer count before it, after it and the consumers
    seen all agree; else it is scanned again. A reader of ``subject`` created after the grace
    (a resumed download's, after its walk) never takes over from one deleted meanwhile (the
    walk's consumer stays until the read ends), so a miss needs a deletion and a creation of
    other consumers between the same two pages of one scan (more than 256 consumers). Never
    clean within ``LIST_SCANS``: read."""
    for _ in range(LIST_SCANS):
        count = (await js.stream_info(stream_name(names))).state.consumer_count
        seen = 0
        while True:
            page = await js.consumers_info(stream_name(names), offset=seen)
            if any(_reads(consumer, subject) for consumer in page):
                return True
            if seen == 0 and len(page) < LIST_PAGE:
                return False  # the whole list in one reply
            if not page:
                break
            seen += len(page)
        after = (await js.stream_info(stream_name(names))).state.consumer_count
        if count == after == seen:
            return False
    return True


def _reads(consumer: api.ConsumerInfo, subject: str) -> bool:
    config = consumer.config
    return config.filter_subject == subject or subject in (config.filter_subjects or [])


def replaced_nuid(info: api.ObjectInfo) -> str | None:
    """The nuid of the content ``info``'s object replaced (its ``Jobrunner-Replaces`` header)."""
    found = (info.headers or {}).get(REPLACES_HEADER)
    if isinstance(found, list):
        found = found[0] if found else None
    return found if isinstance(found, str) and found else None


def sha256_of(info: api.ObjectInfo) -> str | None:
    """The object's SHA-256 in hex, from its description's ``SHA-256=<base64url>`` digest
    (``None`` when it has none: an object another client wrote may not)."""
    algorithm, _, encoded = (info.digest or "").partition("=")
    if algorithm.upper() != "SHA-256" or not encoded:
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


async def object_info(js: JetStreamContext, names: Names, object_name: str) -> api.ObjectInfo:
    store = ObjectStore(name=names.artifacts_bucket, stream=stream_name(names), js=js)
    try:
        return await store.get_info(object_name)
    except nats.js.errors.ObjectNotFoundError:
        raise ObjectMissing(object_name) from None


class ResumePoint(NamedTuple):
    """Where a read from byte ``start`` begins (``resume_point``): the chunk that holds it."""

    start: int
    sequence: int | None  # the chunk's stream sequence (None: the object's first chunk)
    chunks_before: int  # the object's chunks before it (all of them: no chunk holds ``start``)
    offset: int  # of the chunk's first byte in the object
    # The consumer that walked the chunks' sizes: kept until the read ends, so the content is
    # seen as read (``purge_when_unread``) by a consumer that was there before the reader.
    walk: JetStreamContext.PullSubscription | None = None


FROM_THE_START = ResumePoint(start=0, sequence=None, chunks_before=0, offset=0)

# A resumed download's chunk sizes asked for at a time (a headers-only message: some 200 bytes).
WALK_BATCH_CHUNKS = 1024
MSG_SIZE_HEADER = "Nats-Msg-Size"  # a headers-only consumer's: the size of the payload left out


class ChunkSizeUnknown(Exception):
    """A chunk of the walk came without ``Nats-Msg-Size``: NATS ignored ``headers_only``."""


async def resume_point(
    js: JetStreamContext, names: Names, info: api.ObjectInfo, idle_seconds: float, start: int
) -> ResumePoint:
    """Where the chunk that holds byte ``start`` is, from the sizes of the chunks before it.

    They come through a headers-only consumer of the object's chunks: each chunk as its size
    (``Nats-Msg-Size``) without its bytes, so finding the place costs NATS a small message per
    chunk before it, not the chunks themselves (and the time to it grows with ``start``). Sizes
    are read, never assumed: chunks need not all be ``max_chunk_size`` long (another NATS
    client's short reads), so no place is computed from it. The walk's consumer is part of the
    answer and goes when the read ends (``read_chunks``), or by its inactive threshold should
    the read never start; it goes at once should the walk fail (``ReadStalled`` when NATS sends
    nothing for ``idle_seconds``, or NATS's own errors: a restart). Called before a download's
    answer starts, so such a failure is an error answer, not a cut body."""
    chunks = info.chunks or 0
    if start == 0 or chunks == 0:
        return FROM_THE_START
    walk = await _reader(js, names, info.nuid, idle_seconds, headers_only=True)
    try:
        offset = 0
        before = 0
        sizes = _delivered(walk, chunks, WALK_BATCH_CHUNKS, idle_seconds, info.name)
        async with contextlib.aclosing(sizes):
            async for msg in sizes:
                size = _payload_size(msg)
                if offset + size > start:
                    sequence = msg.metadata.sequence.stream
                    return ResumePoint(start, sequence, before, offset, walk)
                offset += size
                before += 1
    except BaseException:
        await _drop_consumer(js, names, walk)
        raise
    # Its description claims more bytes than its chunks hold: nothing is read.
    log.warning(
        "artifact chunks end before the range",
        object_name=info.name,
        start=start,
        chunk_bytes=offset,
        size=info.size,
    )
    return ResumePoint(start, None, chunks, offset, walk)


def _payload_size(msg: Msg) -> int:
    """A chunk's size from its headers-only copy. A server that ignored ``headers_only`` would
    send the chunks whole, ``WALK_BATCH_CHUNKS`` of them a request (128 MiB): refused."""
    size = (msg.headers or {}).get(MSG_SIZE_HEADER)
    if size is None:
        raise ChunkSizeUnknown(f"NATS sent a chunk without its {MSG_SIZE_HEADER} header")
    return int(size)


async def read_chunks(
    js: JetStreamContext,
    names: Names,
    info: api.ObjectInfo,
    idle_seconds: float,
    at: ResumePoint = FROM_THE_START,
) -> AsyncGenerator[bytes, None]:
    """The object's bytes from ``at`` on (``resume_point``; the whole object by default), in
    stored chunks (the first one cut at ``at.start``), a few at a time.

    From an ephemeral pull consumer starting at ``at``'s chunk (the chunks before it are never
    read), ``READ_BATCH_CHUNKS`` per request: the API never holds more of a download than that,
    however slowly its client reads. (A push consumer with flow control let the server send far
    more than nats-py's pending limit before it waited: the subscription dropped chunks as a
    slow consumer.) Raises :class:`ReadStalled` when NATS sends nothing for ``idle_seconds``
    (NATS away), give or take ``READ_WAIT_SECONDS``. The reader's consumer and ``at``'s walk go
    when the read ends, however it ends.
    """
    try:
        left = (info.chunks or 0) - at.chunks_before
        if (info.size or 0) == 0 or left <= 0:
            return
        sub = await _reader(js, names, info.nuid, idle_seconds, from_sequence=at.sequence)
        try:
            cut = at.start - at.offset
            messages = _delivered(sub, left, READ_BATCH_CHUNKS, idle_seconds, info.name)
            async with contextlib.aclosing(messages):
                async for msg in messages:
                    yield msg.data[cut:] if cut else msg.data
                    cut = 0
        finally:
            await _drop_consumer(js, names, sub)
    finally:
        if at.walk is not None:
            await _drop_consumer(js, names, at.walk)


async def _reader(
    js: JetStreamContext,
    names: Names,
    nuid: str,
    idle_seconds: float,
    *,
    headers_only: bool = False,
    from_sequence: int | None = None,
) -> JetStreamContext.PullSubscription:
    """An ephemeral pull consumer of content ``nuid``'s chunks, from its first chunk or from
    stream sequence ``from_sequence``; it is what marks the content as being read."""
    return await js.pull_subscribe(
        chunk_subject(names, nuid),
        stream=stream_name(names),
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL
            if from_sequence is None
            else api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=from_sequence,
            headers_only=headers_only or None,
            mem_storage=True,
            # Gone by itself should this API process die mid-download.
            inactive_threshold=_inactive_threshold(idle_seconds),
        ),
    )


async def _delivered(
    sub: JetStreamContext.PullSubscription,
    count: int,
    batch: int,
    idle_seconds: float,
    object_name: str,
) -> AsyncGenerator[Msg, None]:
    """The next ``count`` messages of ``sub``, asked for ``batch`` at a time; raises
    :class:`ReadStalled` once the requests in a row that got nothing have waited
    ``idle_seconds``."""
    received = 0
    silent = 0.0  # seconds the requests in a row that got nothing waited
    while received < count:
        wait = min(READ_WAIT_SECONDS, idle_seconds - silent)
        asked_at = time.monotonic()
        try:
            messages = await sub.fetch(min(batch, count - received), wait)
        except nats.errors.TimeoutError:
            messages = []
        if not messages:
            # Nothing came: a timeout, or a status answer, for which nats-py returns an empty
            # batch (chunks purged under the consumer: the name stored again). Both are
            # silence; resetting the count on an empty batch left such a download hanging.
            early = wait - (time.monotonic() - asked_at)
            if early > 0:
                # An answer at once (a status): pace the next request rather than ask the
                # server again and again until the idle limit.
                await asyncio.sleep(min(EMPTY_ANSWER_PAUSE_SECONDS, early))
            silent += time.monotonic() - asked_at
            if silent >= idle_seconds:
                raise ReadStalled(object_name)
            continue
        silent = 0.0
        for msg in messages:
            received += 1
            yield msg


READER_INACTIVE_SECONDS = 30.0  # a reader's consumer outlives a dead API process this long


def _inactive_threshold(idle_seconds: float) -> float:
    return max(READER_INACTIVE_SECONDS, idle_seconds * 3)


GUARD_SUBJECTS = 100  # members one guard consumer filters on (the request stays small)


class ReadGuards:
    """Consumers that mark content as read before its download gets to it: the ZIP archive
    reads its members one after the other, possibly for longer than the grace of a member's
    replaced content (``purge_when_unread``), so each member's chunk subject is added to one of
    the archive's guards as soon as its description is read (one request, as a download's own
    consumer: within the grace), and the guards are kept until the archive ends.

    A guard is a pull consumer filtered on up to ``GUARD_SUBJECTS`` members' chunk subjects (one
    per member would spend the bucket stream's consumers, ``stream_max_consumers``), updated
    with each; it delivers only chunks stored after it (none ever come: each object has subjects
    of its own), so it holds nothing. A pull consumer the server hears no request from for its
    inactive threshold goes, so while the archive streams (``kept``) each guard is asked for a
    chunk every third of it; should this API process die, the guards go within the threshold
    like any reader's consumer. Likewise when the body is never iterated (the client gone
    before the first byte: ``kept`` never starts, so it drops nothing): they expire."""

    def __init__(self, js: JetStreamContext, names: Names, idle_seconds: float) -> None:
        self._js = js
        self._names = names
        self._threshold = _inactive_threshold(idle_seconds)
        self._guards: dict[str, list[str]] = {}  # consumer name: the subjects it filters on
        self._subs: list[JetStreamContext.PullSubscription] = []

    async def add(self, info: api.ObjectInfo) -> None:
        """Guard ``info``'s content: its subject added to the newest guard (or a new one)."""
        names = list(self._guards)
        if not names or len(self._guards[names[-1]]) >= GUARD_SUBJECTS:
            names.append(f"guard-{uuid.uuid4().hex}")
        name = names[-1]
        subjects = [*self._guards.get(name, []), chunk_subject(self._names, info.nuid)]
        await self._js.add_consumer(
            stream_name(self._names),
            config=api.ConsumerConfig(
                name=name,
                filter_subjects=subjects,
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.NEW,
                mem_storage=True,
                inactive_threshold=self._threshold,
            ),
        )
        self._guards[name] = subjects

    async def kept(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``stream``'s bytes, the guards kept while it runs and dropped when it ends."""
        keeping = asyncio.Event()  # set when the stream ends
        keeper = asyncio.get_running_loop().create_task(self._keep_alive(keeping))
        try:
            async for part in stream:
                yield part
        finally:
            try:
                await stopping.end_loop(keeper, keeping)
            finally:
                await self.drop()

    async def drop(self) -> None:
        guards, self._guards = list(self._guards), {}
        subs, self._subs = self._subs, []
        with contextlib.suppress(Exception):
            await asyncio.shield(self._drop(guards, subs))

    async def _drop(self, guards: list[str], subs: list[JetStreamContext.PullSubscription]) -> None:
        async with asyncio.timeout(ACK_WAIT_SECONDS):
            for sub in subs:
                await sub.unsubscribe()
            for name in guards:
                await self._js.delete_consumer(stream_name(self._names), name)

    async def _keep_alive(self, stop: asyncio.Event) -> None:
        # Until ``stop``, not until a cancel: one that arrives as a bind's or a fetch's reply
        # does is lost, and the keeper would keep the guards (and the download's end) for ever.
        interval = self._threshold / 3
        while not stop.is_set():
            await stopping.pause(stop, interval)
            if stop.is_set():
                return
            # The expected answer is a timeout (nothing to deliver); NATS away: next time.
            with contextlib.suppress(Exception):
                # One at a time into ``_subs``: one that fails leaves the bound ones for
                # ``drop`` to unsubscribe, and the rest are bound next time.
                for name in list(self._guards)[len(self._subs) :]:
                    self._subs.append(
                        await self._js.pull_subscribe_bind(
                            consumer=name, stream=stream_name(self._names)
                        )
                    )
                await asyncio.gather(
                    *(sub.fetch(1, timeout=min(1.0, interval / 2)) for sub in self._subs),
                    return_exceptions=True,
                )


async def _drop_consumer(
    js: JetStreamContext, names: Names, sub: JetStreamContext.PullSubscription
) -> None:
    """The consumer goes at once, whatever happens (its inactive threshold would remove it
    later anyway)."""

    async def drop() -> None:
        async with asyncio.timeout(ACK_WAIT_SECONDS):
            consumer = (await sub.consumer_info()).name
            await sub.unsubscribe()
            await js.delete_consumer(stream_name(names), consumer)

    with contextlib.suppress(Exception):
        await asyncio.shield(drop())
