"""Pending purges of artifact content, kept in JetStream so that no single API process owns one.

An external upload of a name writes content under a new nuid and, with its description, makes the
name serve it; the content it replaced (and any attempt of its own that never got served) must go
once no download reads it, and must not stay for ever because the API that took the upload died.
So every such content gets a record in the KV bucket ``<prefix>_artifact_purges`` (key: its
nuid) *before* anything could make it garbage (``UploadRecords``):

- before each upload attempt writes a chunk: its own nuid, and the nuid the name serves now (the
  content it is about to replace), both *unconfirmed*: due an upload window later (the setting
  ``artifact_upload_window_seconds``, 80 s);
- while the attempt's chunks are written, its own record is *renewed* about every third of a
  window (``UploadRecords.writing``): a compare-and-set of the revision it wrote, due a window on
  again. So the window bounds how long an API may be silent (dead, stalled), not how long it
  takes to store an upload; should a sweep have confirmed the record first (the API stalled two
  thirds of a window between two chunks), the compare-and-set fails and the attempt is given up
  (503), as at the fence;
- right before the attempt's description is published, its own record is *fenced*: a
  compare-and-set of the revision it wrote pushes its due ``DESCRIBING_WINDOW_SECONDS`` (an hour)
  on. Should a sweep have changed the record first (it confirmed or took it: the API stalled past
  the upload window before its description), the compare-and-set fails and the attempt is given
  up (503): exactly one of the two decides whether that content is served or purged. The replaced
  content's record is written again, due as long on. An hour, not a window: the fence cannot be
  taken back, so a stall between it and the description would otherwise let a sweep purge the
  attempt (or drop the replaced content's record, the name still serving it) and the description
  then name purged content; neither content has a reader needing its space back soon. Once the
  description is acknowledged (``described``) the attempt's record is due an upload window on
  again; if the name serves it with its chunks gone (a stall of an hour), 503 and the replaced
  content recorded again;
- once the description is stored, the replaced content's record is *confirmed*: due one grace
  (``artifactstore.replaced_grace``) later, the time a download that read the old description
  needs to create its consumer.

Every API process sweeps the bucket at start and every ``artifact_purge_sweep_seconds``:

- an unconfirmed record past its due: the name still serves that nuid, so it is live content (the
  record goes); otherwise it is garbage since at least now: confirmed, due a grace from now;
- a confirmed record a grace past its due (the API that took the upload purges it itself at its
  due, ``artifactstore.purge_when_unread``; the sweep takes over only if it did not): taken with a
  compare-and-set of its revision (another API's sweep loses and leaves it), the name read
  again (a description stored late makes it live: the record goes), then purged if no consumer
  of the bucket reads it, and the record removed; else looked at again a grace later.

A record done with is *removed* (its subject purged up to its revision: a newer record of the
same nuid survives), not deleted: a KV delete leaves a marker on the subject for as long as the
bucket keeps messages (for ever with ``stream_max_age_days`` 0), and every pass would list and
read every marker ever made. So the bucket holds only pending purges: the uploads of the last
window or so, and replaced content still being read.

A purge done twice is harmless (purging an empty subject), and a record is only ever purged once
the name serves something else, so the record can be written early and freely.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext, api

from jobrunner.common import ackinbox, artifactstore, reconfigure
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names

log = structlog.get_logger()

# How long the records stay pending from an attempt's fence to its description's ack: the
# attempt's own content and the content it replaces (module docstring). Only a stall of the API
# longer than this between its fence and its description lets a sweep purge the attempt (then
# the description, sent anyway, names purged content: answered 503, the worker sends the file
# again). Long on purpose: neither content has a reader waiting for its space back, and a
# successful upload brings its record back to the upload window at once.
DESCRIBING_WINDOW_SECONDS = 3600.0
# An attempt's record is renewed this many times a window while its chunks are written: a sweep
# confirms it only if the API writes nothing for two thirds of a window (a stall, a death).
RENEWALS_PER_WINDOW = 3
# JetStream's refusal of a publish whose expected last subject sequence is not the subject's.
WRONG_LAST_SEQUENCE = 10071
# The most subjects the server details in one stream info answer (then pages, by offset): the
# server's, not set by the request; ``_keys`` asks for pages until the total is listed.
SERVER_SUBJECTS_PAGE = 100_000


class PendingPurge(msgspec.Struct, frozen=True):
    object_name: str  # the name whose description decides whether the content is garbage
    due: float  # wall clock (epoch seconds): shared by every API process
    confirmed: bool  # the name served other content (or none) at least a grace before ``due``


def _stream(names: Names) -> str:
    return f"KV_{names.artifact_purges_bucket}"


def _subject(names: Names, nuid: str) -> str:
    return f"$KV.{names.artifact_purges_bucket}.{nuid}"


async def ensure_bucket(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """File storage (a record outlives a NATS restart), one revision per key, the replicas and
    max age of the artifacts bucket itself (a record has no use once its chunks aged out): an
    existing bucket's max age follows a changed ``stream_max_age_days`` at every start, like the
    artifacts bucket's. Several services may start at once: whichever creates it, the others
    find it there."""
    max_age = settings.stream_max_age_days * 86400
    try:
        bucket = await js.stream_info(_stream(names))
    except nats.js.errors.NotFoundError:
        try:
            await js.create_key_value(
                bucket=names.artifact_purges_bucket,
                history=1,
                storage=api.StorageType.FILE,
                replicas=settings.stream_replicas,
                ttl=max_age or None,
            )
            return
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != artifactstore.STREAM_NAME_IN_USE:
                raise
        # Another service starting now created it, maybe with other settings.
        bucket = await js.stream_info(_stream(names))
    await reconfigure.bucket_ttl(js, bucket, max_age)


async def _put(
    js: JetStreamContext,
    names: Names,
    nuid: str,
    entry: PendingPurge,
    last: int | None = None,
) -> int | None:
    """Write ``nuid``'s record; its revision. With ``last``: only if the record is still at
    that revision (None when it is not: another API changed or removed it first)."""
    headers = None if last is None else {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last)}
    try:
        # Through the connection's ack inbox, as every other publish: an ack a NATS restart
        # lost fails at the reconnect (``AckLostWithConnection``, a timeout), not after it.
        inbox = ackinbox.of(js._nc)
        data = msgspec.json.encode(entry)
        ack = await inbox.publish_headed(_subject(names, nuid), data, headers, js._timeout)
    except nats.js.errors.APIError as exc:
        if last is not None and exc.err_code == WRONG_LAST_SEQUENCE:
            return None
        raise
    return ack.seq


async def remove(js: JetStreamContext, names: Names, nuid: str, revision: int) -> None:
    """``nuid``'s record at ``revision`` is done with: its subject is purged up to that revision
    (no marker left; a record written since, by another upload or sweep, stays)."""
    await js.purge_stream(_stream(names), seq=revision + 1, subject=_subject(names, nuid))


async def record(
    js: JetStreamContext,
    names: Names,
    nuid: str,
    object_name: str,
    window: float,
) -> int:
    """Content that is garbage unless ``object_name`` serves it once its upload is over (due
    ``window`` from now); the record's revision."""
    entry = PendingPurge(object_name, time.time() + window, confirmed=False)
    revision = await _put(js, names, nuid, entry)
    assert revision is not None  # an unconditional write
    return revision


async def confirm(
    js: JetStreamContext, names: Names, nuid: str, object_name: str, grace: float
) -> int:
    """``object_name`` no longer serves ``nuid``: it goes a grace from now, once unread; the
    record's revision."""
    revision = await _put(js, names, nuid, PendingPurge(object_name, time.time() + grace, True))
    assert revision is not None  # an unconditional write
    return revision


class UploadRecords:
    """One external upload's records (``artifactstore.put_file`` calls these): each attempt's
    own content and the content the name served when the upload read it (``replaces``), each
    due ``window`` (``artifact_upload_window_seconds``) after it is written; an hour while
    fenced."""

    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        object_name: str,
        replaces: str | None,
        window: float,
    ) -> None:
        self._js = js
        self._names = names
        self._object_name = object_name
        self._replaces = replaces
        self._window = window
        self._revisions: dict[str, int] = {}  # attempt nuid -> its record's revision
        self._renew_at = 0.0  # monotonic: when the attempt's record is next renewed

    async def attempt(self, nuid: str) -> None:
        """Before the attempt's first chunk."""
        self._renew_at = time.monotonic() + self._window / RENEWALS_PER_WINDOW
        self._revisions[nuid] = await record(
            self._js, self._names, nuid, self._object_name, self._window
        )
        await self._record_replaced()

    async def writing(self, nuid: str) -> None:
        """Between the attempt's chunks: once a third of a window has passed since its record
        was written, the record is due a window on again (a compare-and-set of its revision),
        so that storing a big upload may take longer than the window;
        :class:`artifactstore.AttemptTaken` if a sweep confirmed it first. The replaced
        content's record is not renewed: a sweep finding it due while the name still serves it
        drops it, and the fence records it again."""
        if time.monotonic() < self._renew_at:
            return
        self._renew_at = time.monotonic() + self._window / RENEWALS_PER_WINDOW
        renewed = PendingPurge(self._object_name, time.time() + self._window, confirmed=False)
        revision = await _put(self._js, self._names, nuid, renewed, last=self._revisions[nuid])
        if revision is None:
            raise artifactstore.AttemptTaken(self._object_name)
        self._revisions[nuid] = revision

    async def describing(self, nuid: str) -> None:
        """Right before the attempt's description is published: fence it against the sweep
        (module docstring); :class:`artifactstore.AttemptTaken` if the sweep came first. Both
        records are then due ``DESCRIBING_WINDOW_SECONDS`` on (an hour): a sweep reaching
        either before the description is acknowledged needs a stall that long."""
        fenced = PendingPurge(
            self._object_name, time.time() + DESCRIBING_WINDOW_SECONDS, confirmed=False
        )
        revision = await _put(self._js, self._names, nuid, fenced, last=self._revisions[nuid])
        if revision is None:
            raise artifactstore.AttemptTaken(self._object_name)
        self._revisions[nuid] = revision
        await self._record_replaced(DESCRIBING_WINDOW_SECONDS)

    async def described(self, nuid: str, size: int) -> None:
        """After the description's ack. Should the name serve the attempt while its chunks are
        gone (a sweep took it: the API stalled a describing window between fence and
        description), :class:`artifactstore.AttemptTaken`, the replaced content recorded
        again first (that sweep dropped its record while the name still served it). Content
        replaced and purged since by a later upload is not this upload's failure. Otherwise
        both records are due an upload window from now, not an hour: the attempt's (a later
        upload may have read the name before this one stored, and replace content it never
        heard of: this one's) and the replaced content's (should the API die before its own
        purge confirms it, the sweep purges it that soon)."""
        if (
            size
            and not await artifactstore.has_chunks(self._js, self._names, nuid)
            and await _served_nuid(self._js, self._names, self._object_name) == nuid
        ):
            await self._record_replaced()
            raise artifactstore.AttemptTaken(self._object_name)
        entry = PendingPurge(self._object_name, time.time() + self._window, False)
        try:
            # Only if still the fence's revision: a later upload's record of it stands.
            await _put(self._js, self._names, nuid, entry, last=self._revisions[nuid])
            await self._record_replaced()
        except Exception as exc:  # the records stay due a describing window on: purged later
            log.warning("artifact purge records not shortened", nuid=nuid, error=repr(exc))

    async def _record_replaced(self, window: float | None = None) -> None:
        """The replaced content's record, due ``window`` (by default the upload window) on."""
        if self._replaces is not None:
            due_in = self._window if window is None else window
            await record(self._js, self._names, self._replaces, self._object_name, due_in)


# NATS itself not answering (paused, away, the connection closed): every remaining record would
# wait its own request timeout and fail alike, so the pass ends at the first of these.
_NATS_AWAY = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
)


async def sweep(
    js: JetStreamContext, names: Names, grace: float, stop: asyncio.Event | None = None
) -> None:
    """One pass over the pending purges (see the module's docstring). A record that fails on
    its own is logged and left for the next pass; the others are settled all the same. NATS
    not answering ends the pass (raised): the next one starts over. Once ``stop`` is set the
    pass ends before its next record: what it leaves, the next pass (of any API) settles."""
    for nuid in await _keys(js, names):
        if stop is not None and stop.is_set():
            return
        try:
            try:
                message = await js.get_last_msg(_stream(names), _subject(names, nuid))
            except nats.js.errors.NotFoundError:
                continue  # done by another API meanwhile
            await _settle(js, names, nuid, message.seq or 0, message.data or b"", grace)
        except _NATS_AWAY:
            raise
        except Exception as exc:
            log.warning("artifact purge not settled", nuid=nuid, error=repr(exc))


async def _keys(js: JetStreamContext, names: Names) -> list[str]:
    """The records' keys, a page of up to ``SERVER_SUBJECTS_PAGE`` per request (nats-py's
    ``KeyValue.keys`` reads a watcher's consumer with no timeout: a NATS restart mid-read would
    hang the sweep; its ``stream_info`` asks for the first page only). Pages are asked by
    offset into a list the server sorts anew for each request: a record removed by another API
    between two pages shifts the rest, so one key may be missed this pass (the next lists it)."""
    prefix = f"$KV.{names.artifact_purges_bucket}."
    keys: list[str] = []
    while True:
        request = {"subjects_filter": prefix + ">", "offset": len(keys)}
        reply = await js._nc.request(
            f"{js._prefix}.STREAM.INFO.{_stream(names)}",
            json.dumps(request).encode(),
            timeout=js._timeout,
        )
        answer = json.loads(reply.data)
        if "error" in answer:
            nats.js.errors.APIError.from_error(answer["error"])  # raises the error's own type
        page = (answer.get("state") or {}).get("subjects") or {}
        keys.extend(subject.removeprefix(prefix) for subject in page)
        if not page or len(keys) >= answer.get("total", 0):
            return keys


async def _settle(
    js: JetStreamContext, names: Names, nuid: str, revision: int, value: bytes, grace: float
) -> None:
    try:
        purge = msgspec.json.decode(value, type=PendingPurge)
    except msgspec.DecodeError:
        await remove(js, names, nuid, revision)  # not ours to read: never written by jobrunner
        return
    now = time.time()
    if not purge.confirmed:
        if purge.due > now:
            return
        if await _served_nuid(js, names, purge.object_name) == nuid:
            await remove(js, names, nuid, revision)  # live content: nothing to purge
            return
        # Garbage since at least now: a download that read its description before has its
        # consumer within a grace. (An upload fencing its description now loses to this.)
        confirmed = PendingPurge(purge.object_name, now + grace, confirmed=True)
        await _put(js, names, nuid, confirmed, last=revision)
        return
    if purge.due + grace > now:
        return  # the API that took the upload purges it at its due; taken over a grace later
    # Taken: another API's sweep now finds it due a grace later (or loses this compare-and-set).
    claimed = PendingPurge(purge.object_name, now, confirmed=True)
    taken = await _put(js, names, nuid, claimed, last=revision)
    if taken is None:
        return
    log.info("artifact purge taken up", nuid=nuid)
    if await _served_nuid(js, names, purge.object_name) == nuid:
        # Its description came after all (stored late by a NATS that was frozen past the upload
        # window): live content.
        await remove(js, names, nuid, taken)
        return
    if await artifactstore.being_read(js, names, nuid):
        return  # a grace later, again
    await js.purge_stream(
        artifactstore.stream_name(names), subject=artifactstore.chunk_subject(names, nuid)
    )
    await remove(js, names, nuid, taken)
    log.info("artifact chunks purged by the sweep", nuid=nuid)


async def _served_nuid(js: JetStreamContext, names: Names, object_name: str) -> str | None:
    try:
        return (await artifactstore.object_info(js, names, object_name)).nuid
    except artifactstore.ObjectMissing:
        return None


# How long the API's shutdown waits for the sweeper after its stop: the request of a pass whose
# cancel was lost (see sweep_forever) ends by nats-py's request timeout (5 s; with NATS away its
# failure ends the pass, and the stop is seen), and 2 s for a loaded event loop. Past it the
# sweeper is left, and logged: the connection's close, which follows, ends its pass.
SWEEPER_STOP_SECONDS = 7.0


async def sweep_forever(
    js: JetStreamContext, names: Names, settings: Settings, stop: asyncio.Event
) -> None:
    """The API's sweeper: at start, then every ``artifact_purge_sweep_seconds``, until ``stop``;
    a failed pass (NATS away) is only logged: the records wait for the next one.

    Ends on ``stop`` as well as on cancel: nats-py swallows a cancel that arrives while it
    flushes, and Python 3.11's wait_for loses one that arrives as its reply does; the pass then
    returns, and a loop that relied on the cancel would sweep on and never let the API stop (a
    test's teardown: "api did not stop within 30 s", the sweeper cancelled yet asleep)."""
    grace = artifactstore.replaced_grace(settings.artifact_read_idle_seconds)
    while not stop.is_set():
        try:
            await sweep(js, names, grace, stop)
        except Exception as exc:
            log.warning("artifact purges not swept", error=repr(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.artifact_purge_sweep_seconds)
