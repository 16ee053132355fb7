"""Slot locks as leases in a NATS KV bucket.

One key per lock slot (``slot.<lock>``), or per job for job types without a lock
(``job.<job_id>``), so every running job has a lease. A lease is written with a per-message TTL and
renewed while the job runs; each write is conditional on the revision we last wrote, so a runner
whose lease expired (and was taken over) can no longer act for that job: that is the fence.

The API *reserves* a slot (phase ``reserved``) before publishing a JobRequested for a type whose
busy policy is ``reject``; the runner that picks the job up turns the reservation into a held lease.

For a type whose busy policy is ``queue``, the API puts a queue entry (``queue.<lock>.<job_id>``,
no TTL) before publishing the request; the entry's revision is the job's place in the queue, and
only the queue's head may take the slot when it frees.

Each running job also has a record (``run.<job_id>``, no TTL) naming its slot key, written before
it starts and removed when it ends. A record whose slot holds no lease for its job marks a job
whose runner is gone, however long ago and whether or not anyone watched its lease expire: every
runner sweeps for such records.

A held lease records what another runner needs to end the job's tool should this runner die:
host, boot id, the tool's process group and its start time, and the runner's own pid and start
time (so a runner on the same host can tell at once that the holder is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Sequence
from typing import Literal, TypeGuard

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from jobrunner.common import ackinbox, keywatch, retry, stopping
from jobrunner.contracts.names import Names

log = structlog.get_logger()

_KEY_SAFE = re.compile(r"[^-_A-Za-z0-9]")


class SlotValue(msgspec.Struct, kw_only=True):
    job_id: str
    phase: Literal["reserved", "held"]
    job_type: str = ""
    runner_id: str | None = None
    host: str | None = None
    boot_id: str | None = None
    runner_pid: int | None = None
    runner_started: int | None = None  # clock ticks since boot (/proc/<pid>/stat field 22)
    pid: int | None = None
    pgid: int | None = None
    started: int | None = None  # the tool's start, clock ticks since boot


class QueueEntry(msgspec.Struct, kw_only=True):
    job_id: str
    job_type: str = ""
    queued_at: float = 0.0  # unix time


class RunRecord(msgspec.Struct, kw_only=True):
    """A job that started, and the slot key whose lease says its runner is alive."""

    job_id: str
    slot_key: str
    runner_id: str | None = None
    started_at: float = 0.0  # unix time


RESERVATION_MIN_TTL = 60  # seconds

# How long enqueue_many waits for the server to confirm a batch's queue entries: about as long as
# publish_many waits out an outage (its 5 s ack wait, then a 5 s publish), so a batch POST gives
# up on a NATS outage after the same time whether its jobs have locks or not.
ENQUEUE_ACK_SECONDS = 10.0

# Markers (a released lease, a left queue) remove themselves after this long.
MARKER_TTL = "60s"
# A removed run record leaves a purge marker (it replaces the record: the bucket keeps one
# message per key) that removes itself after this long. Nobody acts on it (the sweep skips
# markers, the board skips ``run.`` keys), but each runner's sweep is handed every marker there
# is, every round. A delete marker was there 120 s: its own 60 s, then the limit marker the
# server puts in its place for the bucket's ``limit_marker_ttl``. A purge marker gets no limit
# marker after it on nats-server 2.11.7 and later (2.11.2-2.11.6, measured, put one: a minute
# more), so a removed record is there about a second: at most one sweep of each runner is handed
# it, not 24 (bench/RESULTS.md, "s27purge" and "s28oldnats").
RECORD_MARKER_TTL = "1s"
# How long a pipelined delete's ack is waited for before it is sent again on its own.
PIPELINED_ACK_WAIT = 5.0
# A renewal refused while the key still reads as the revision it named (a cluster replicating
# an earlier write of ours) is written again after this pause, this many times at most.
RENEWAL_SETTLE_PAUSE = 0.03
RENEWAL_SETTLE_TRIES = 5
# Deletes a release sends at most, each after the one before was refused (see release).
RELEASE_TRIES = 12
# What a read of the lock bucket raises while NATS is unreachable (paused, restarting, closed).
NATS_UNREACHABLE = (TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError)


# The holder of a lease whose value cannot be read (written by hand, corrupt, another version's):
# someone's, so the slot is not free; nobody's that this code could take over, renew or release.
# It stays until it expires (a lease has a TTL) or is deleted.
UNKNOWN_HOLDER = SlotValue(job_id="", phase="held")
# A value put by hand has no TTL: it stays until deleted (``jobrunner lock clear-unreadable``).
# Said again this often while it is met, not once per process: one line is easily missed.
UNREADABLE_SAID_EVERY = 300.0  # seconds


class Unreadable:
    """The lock bucket keys met holding what cannot be read, and when each was last said."""

    def __init__(self) -> None:
        self._said: dict[str, float] = {}

    def due(self, key: str) -> bool:
        """Whether to say so now: the first time, then every UNREADABLE_SAID_EVERY."""
        now = time.monotonic()
        said = self._said.get(key)
        if said is not None and now - said < UNREADABLE_SAID_EVERY:
            return False
        self._said[key] = now
        return True

    def readable(self, key: str) -> None:
        """``key`` holds what can be read again: said at once should that change."""
        self._said.pop(key, None)


ClearOutcome = Literal["cleared", "free", "readable", "changed"]


class Lease(msgspec.Struct, kw_only=True):
    key: str
    revision: int
    value: SlotValue
    # When the write that made this revision was sent (time.monotonic()). The server started the
    # TTL when it stored the write, which is later: the lease lasts at least until sent_at + TTL.
    sent_at: float = 0.0


def key_safe(name: str) -> str:
    return _KEY_SAFE.sub("_", name)


def slot_key(lock: str | None, job_id: str, attempt_of: str | None = None) -> str:
    """The slot a job takes. Without a lock, every attempt of one job (``attempt_of``, the first
    attempt's id) shares one slot: a new attempt never runs beside the one it replaces, which may
    still be stopping its tool after a restart cancelled it."""
    if lock:
        return "slot." + key_safe(lock)
    return "job." + key_safe(attempt_of or job_id)


def run_key(job_id: str) -> str:
    return "run." + key_safe(job_id)


def fence_key(runner_id: str) -> str:
    """A runner's scratch key: ``give_back`` writes it to wait until earlier writes are stored."""
    return "fence." + key_safe(runner_id)


def queue_key(lock: str, job_id: str) -> str:
    return f"queue.{key_safe(lock)}.{key_safe(job_id)}"


class SlotTable:
    """The lock bucket, as the API and the runners use it."""

    def __init__(self, js: JetStreamContext, names: Names, ttl_seconds: float) -> None:
        self._js = js
        # Writes are JetStream publishes: through the connection's ack inbox, the message
        # js.publish would send at a fraction of nats-py's request path's cost (a NUID, a
        # future, wait_for's timer and a JSON parse per write; five writes a job, six on a lock).
        self._acks = ackinbox.of(js._nc)
        self._names = names
        self.ttl = max(1, round(ttl_seconds))
        self._kv: KeyValue | None = None
        self._unreadable_keys = Unreadable()

    async def kv(self) -> KeyValue:
        """The lock bucket, read from its stream's leader. A direct read may be answered by a
        replica that has not caught up (a node back after a crash): it could show a slot free
        that is held, and a sweeping runner would then end a healthy job RUNNER_LOST.

        Its look at the bucket is a start's request in the runner's start (the start's short
        timeout, ``retry.start_context``: a look, safe to send again); the handle kept uses
        ``self._js``."""
        if self._kv is None:
            bucket = self._names.locks_bucket
            # Raises BucketNotFoundError when it is missing.
            await retry.start_context(self._js).key_value(bucket)
            self._kv = KeyValue(
                name=bucket, stream=f"KV_{bucket}", pre=f"$KV.{bucket}.", js=self._js, direct=False
            )
        return self._kv

    def _subject(self, key: str) -> str:
        return f"$KV.{self._names.locks_bucket}.{key}"

    async def _write(
        self,
        key: str,
        value: SlotValue | QueueEntry,
        last: int,
        ttl: bool = True,
        timeout: float | None = None,
    ) -> int:
        # kv.update() cannot set a TTL, so write the KV message ourselves: conditional on the
        # last revision (0 = must not exist) and with the lease TTL.
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        if ttl:
            seconds = self.ttl
            if isinstance(value, SlotValue) and value.phase == "reserved":
                # A reservation waits for a runner to pick the job up, which may take longer
                # than a lease lasts on a busy system; it must not lapse while the job waits.
                seconds = max(RESERVATION_MIN_TTL, 4 * self.ttl)
            headers["Nats-TTL"] = f"{seconds}s"
        try:
            ack = await self._acks.publish_headed(
                self._subject(key), msgspec.json.encode(value), headers, timeout
            )
        except Exception as exc:
            if getattr(exc, "err_code", None) in (10071, 10164):
                raise KeyWrongLastSequenceError(description=str(exc)) from None
            raise
        return ack.seq

    async def _read_raw(self, key: str) -> tuple[bytes | None, int]:
        """The live value (if any), and the revision a conditional write must name.

        One read for both: reading them apart would let a write that lands in between be
        overwritten (the second read would return the new holder's revision).
        """
        kv = await self.kv()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError as exc:  # also a deleted key: its tombstone is the last revision
            tombstone = getattr(exc, "entry", None)
            return None, (tombstone.revision if tombstone is not None and tombstone.revision else 0)
        except NotFoundError:
            return None, 0
        revision = entry.revision or 0
        if not entry.value or entry.operation is not None:
            return None, revision  # a marker the server left when a lease expired
        return entry.value, revision

    async def _read(self, key: str) -> tuple[Lease | None, int]:
        raw, revision = await self._read_raw(key)
        if raw is None:
            return None, revision
        try:
            value = msgspec.json.decode(raw, type=SlotValue)
        except msgspec.DecodeError as exc:
            # Read as free, it would be written over: a second holder, should it be a live
            # one's lease after all (a newer jobrunner's).
            self._unreadable(key, exc, "the slot counts as held until it expires or is deleted")
            value = UNKNOWN_HOLDER
        return Lease(key=key, revision=revision, value=value), revision

    def _unreadable(self, key: str, exc: msgspec.DecodeError, meaning: str) -> None:
        """Say (now and then, per key and table) that a value of the bucket does not decode."""
        if self._unreadable_keys.due(key):
            log.warning(
                "lock bucket value cannot be read", key=key, meaning=meaning, error=str(exc)
            )

    def _record(self, key: str, raw: bytes) -> RunRecord | None:
        """A run record; None (said once) when it does not decode."""
        try:
            return msgspec.json.decode(raw, type=RunRecord)
        except msgspec.DecodeError as exc:
            self._unreadable(key, exc, "not a running job's record: left alone")
            return None

    async def current(self, key: str) -> Lease | None:
        return (await self._read(key))[0]

    async def clear_unreadable(self, key: str) -> tuple[ClearOutcome, Lease | None]:
        """Delete ``key`` only if what it holds does not decode as a lease, on the condition
        that it still holds the revision read: a lease written meanwhile, and any readable one,
        is never touched (one holder per slot). Returns what was found, and the lease when it
        was readable."""
        raw, revision = await self._read_raw(key)
        if raw is None:
            return "free", None
        try:
            value = msgspec.json.decode(raw, type=SlotValue)
        except msgspec.DecodeError:
            try:
                await self._delete(key, revision)
            except KeyWrongLastSequenceError:
                return "changed", None
            return "cleared", None
        return "readable", Lease(key=key, revision=revision, value=value)

    async def last_revision(self, key: str) -> int:
        """The revision a create must name: 0, or the tombstone's if the key was deleted."""
        return (await self._read_raw(key))[1]

    async def try_acquire(self, key: str, value: SlotValue, fresh: bool = False) -> Lease | None:
        """Take a free slot; ``None`` when someone holds or reserved it.

        ``fresh``: the key was most likely never written (a job's own slot at its first
        attempt), so the lease is created at once, without reading the key first: one round
        trip instead of two. Should the key exist after all, that create (conditional on no
        revision at all) changes nothing, and the key is read and taken as usual."""
        if fresh:
            sent_at = time.monotonic()
            try:
                revision = await self._write(key, value, 0)
            except KeyWrongLastSequenceError:
                pass
            else:
                return Lease(key=key, revision=revision, value=value, sent_at=sent_at)
        for _ in range(3):
            current, last = await self._read(key)
            if current is not None:
                if current.value.job_id == value.job_id and (
                    current.value.phase == "reserved" or same_holder(current.value, value)
                ):
                    # Our job's reservation (made by the API) becomes our lease; our own lease
                    # is one whose write timed out but was stored.
                    return await self.renew(current, value)
                return None
            sent_at = time.monotonic()
            try:
                revision = await self._write(key, value, last)
            except KeyWrongLastSequenceError:
                continue  # someone wrote between our read and write: look again
            return Lease(key=key, revision=revision, value=value, sent_at=sent_at)
        return None

    async def create_recorded(
        self, key: str, value: SlotValue, record: RunRecord, timeout: float | None = None
    ) -> tuple[Lease | None, bool]:
        """A slot most likely never written (a job's own, at its first delivery) taken and the
        job's run record written in one round trip: the lease, and whether the record is stored.

        The record is sent after the lease, on the same connection, into the same stream, which
        stores them in the order sent: whoever reads the record (a sweep) finds the lease there
        already. (Each write's task puts its message in nats-py's outgoing buffer before it
        first waits, and tasks start in the order they were made.) Should the key exist after
        all, the create changes nothing (None) while the record, naming this job's own slot, is
        stored all the same: true of whoever holds that slot for the job, and written again by
        this runner once it takes the slot."""
        sent_at = time.monotonic()
        creating = asyncio.ensure_future(self._write(key, value, 0, timeout=timeout))
        recording = asyncio.ensure_future(self.record_run(record, timeout=timeout))
        created, recorded = await asyncio.gather(creating, recording, return_exceptions=True)
        if isinstance(created, KeyWrongLastSequenceError):
            return None, not isinstance(recorded, BaseException)
        if isinstance(created, BaseException):
            raise created
        lease = Lease(key=key, revision=created, value=value, sent_at=sent_at)
        return lease, not isinstance(recorded, BaseException)

    async def renew(
        self, lease: Lease, value: SlotValue | None = None, timeout: float | None = None
    ) -> Lease | None:
        """Extend a lease; ``None`` means it was lost (expired and taken, or released).

        A renewal that timed out may still have been stored (late, say after an outage), and the
        next one, naming the older revision, is then rejected. So a rejected renewal reads the
        key: if it holds our own lease (same job, same runner process) at a newer revision, that
        revision is adopted and written again, instead of the job being stopped for nothing.

        ``None`` only on such a read showing the key gone or another's lease (or, on a cluster,
        still the revision named after a few short pauses), never for having tried often: the
        keeper's attempts in flight after an outage all name one revision, and each one refused
        rewrites against the others. Each refusal is another attempt's write stored, so every
        attempt ends, at the latest once the others have.
        """
        new_value = value or lease.value
        revision = lease.revision
        settling = 0
        while True:
            sent_at = time.monotonic()
            try:
                stored = await self._write(lease.key, new_value, revision, timeout=timeout)
            except KeyWrongLastSequenceError:
                current, _ = await self._read(lease.key)
                if not still_ours(current, lease, revision):
                    return None
                if current.revision == revision:
                    # A cluster refuses a conditional write while an earlier write to the key
                    # (another attempt of ours) is still being replicated: the key reads as the
                    # revision we named. Written again once that settles, a few times at most.
                    settling += 1
                    if settling > RENEWAL_SETTLE_TRIES:
                        return None
                    await asyncio.sleep(RENEWAL_SETTLE_PAUSE)
                    continue
                revision = current.revision
                continue
            return Lease(key=lease.key, revision=stored, value=new_value, sent_at=sent_at)

    async def give_back(self, key: str, holder: SlotValue, reserved: bool = False) -> None:
        """Undo what a job's claim may have written before it failed: the job's run record and
        the lease of ``key``, each only if ``holder`` (this runner, for this job) wrote it.
        ``reserved``: the claim turned the API's reservation of the slot into that lease (a
        ``reject`` lock), so the lease becomes that reservation again, conditional on its
        revision, instead of being deleted: the lock stays the pending job's, as it was.

        A write that timed out may still be stored (NATS paused: the server reads it once it
        runs again). Left behind, that lease would hold the job's slot against its next
        delivery until it expired, and then be taken for a runner's death: the job ended
        RUNNER_LOST. The record goes first: a record without its lease is what a sweep takes
        for a lost job.

        A read may overtake writes sent before it (nats-server answers reads apart from storing
        writes), so a write the bucket stores goes first, a delete marker on a scratch key of
        this runner: its ack comes once it is stored, so after every write sent before it on
        this connection, and the reads after it see them. (A write the bucket refuses would
        not do: with replicas, the leader refuses it as soon as it checks it, before the
        writes ahead of it are replicated and applied.)"""
        await self._delete(fence_key(holder.runner_id or holder.job_id), None)
        raw, revision = await self._read_raw(run_key(holder.job_id))
        record = None if raw is None else self._record(run_key(holder.job_id), raw)
        if record is not None and record.runner_id == holder.runner_id and record.slot_key == key:
            with contextlib.suppress(KeyWrongLastSequenceError):
                await _deleted(await self._send_forget(holder.job_id, revision))
        lease, _ = await self._read(key)
        if lease is None or not same_holder(lease.value, holder):
            return
        if not reserved:
            await self.release(lease)
            return
        reservation = SlotValue(job_id=holder.job_id, phase="reserved", job_type=holder.job_type)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._write(key, reservation, lease.revision)

    async def drop_reservation(self, key: str, job_id: str) -> None:
        """Free the slot ``key`` if it holds ``job_id``'s reservation (a job that ended before
        it started)."""
        current = await self.current(key)
        if current is not None and current.value == SlotValue(
            job_id=job_id, phase="reserved", job_type=current.value.job_type
        ):
            await self.release(current)

    async def release(self, lease: Lease, sent: asyncio.Future[Msg] | None = None) -> bool:
        """Free the slot if it is still ours; False when it had already expired or been taken.
        ``sent``: the ack of the first delete, when the caller sent it (``end_run``).

        The delete is conditional on the lease's revision, which may be older than the one the
        key holds: a renewal sent into an outage and abandoned when the job ended is stored
        once NATS is back, ahead of the delete. A refused delete reads the key, and if it holds
        our own lease (same job, same runner process) at a newer revision, deletes that one;
        else, or when NATS cannot answer that read, the lease is left to expire. Never deletes
        another holder's lease: each delete names the revision of ours just read. At most
        ``RELEASE_TRIES`` deletes: each refusal means one more write of ours stored, and a
        stopped keeper has only so many in flight (one per request timeout before its deadline,
        about eight)."""
        revision = lease.revision
        for _ in range(RELEASE_TRIES):
            ack = sent if sent is not None else await self._send_delete(lease.key, revision)
            sent = None
            try:
                await _deleted(ack)
            except KeyWrongLastSequenceError:
                try:
                    current, _ = await self._read(lease.key)
                except NATS_UNREACHABLE as exc:
                    # NATS paused or gone since the refusal (past the read's timeout): left to
                    # expire, as a refused release was before it read the key.
                    log.warning("slot left to expire", key=lease.key, error=repr(exc))
                    return False
                if not still_ours(current, lease, revision):
                    return False
                if current.revision == revision:
                    # As in renew: a cluster refuses while an earlier write of ours to the key
                    # is still being replicated, and the key reads as the revision named.
                    await asyncio.sleep(RENEWAL_SETTLE_PAUSE)
                revision = current.revision
                continue
            return True
        return False  # left to expire

    async def end_run(self, job_id: str, lease: Lease, retry_pause: float) -> bool:
        """An ended job's run record removed and its lease released (see ``release``; its
        result) in one round trip instead of two: both removals are sent, the record's first
        (a purge: ``_send_forget``), before either ack is awaited. Sent from this one
        coroutine, one after the other, they go out in that order whatever a send may wait
        for, on one connection into one stream, which stores them in the order sent: the
        record is still removed before the lease.

        Whichever fails for NATS being away (the pair sent into a pause: no ack within a
        write's 5 s timeout) is sent again, the record first, ``retry_pause`` after that
        attempt failed, while the lease lasts: the lease keeper is stopped, so until
        ``lease.sent_at`` + TTL, when the server lets it expire anyway and the sweep removes
        the record of the ended job. A release still failing then raises, as it did. A cancel
        of the caller ends the retries (``stopping.raise_if_being_cancelled``), even one
        nats-py swallowed."""
        deadline = lease.sent_at + self.ttl
        forgetting, releasing, released = True, True, False
        while True:
            failed: Exception | None = None
            forgot: asyncio.Future[Msg] | None = None
            freed: asyncio.Future[Msg] | None = None
            try:
                if forgetting:
                    forgot = await self._send_forget(job_id, None)
                if releasing:
                    freed = await self._send_delete(lease.key, lease.revision)
            except Exception as exc:  # not sent (the connection closed): not the lease alone
                failed = exc
            if forgot is not None:
                try:
                    await _deleted(forgot)
                    forgetting = False
                except Exception as exc:
                    failed = exc
            if freed is not None:
                try:
                    released = await self.release(lease, freed)
                    releasing = False
                except Exception as exc:
                    failed = exc
            if failed is None:
                return released
            if time.monotonic() >= deadline:
                if releasing:
                    raise failed
                log.warning("ended job's run record left to the sweep", error=repr(failed))
                return released
            # Never a retry after a cancel nats-py swallowed (a runner's exit with NATS frozen:
            # the cancel lost in a forced flush, the connection closed after it): every retry
            # failed on, until the lease's end, up to a TTL past the stop.
            stopping.raise_if_being_cancelled()
            log.warning("lock bucket write failed, retrying", write="end run", error=repr(failed))
            await asyncio.sleep(retry_pause)

    async def _delete(self, key: str, last: int | None) -> None:
        await _deleted(await self._send_delete(key, last))

    async def _send_delete(self, key: str, last: int | None) -> asyncio.Future[Msg]:
        """Send the delete of ``key`` (conditional on revision ``last`` unless None): the
        future of its ack, for ``_deleted``."""
        # A delete marker with its own TTL, so markers of finished jobs do not pile up.
        headers = {"KV-Operation": "DEL", "Nats-TTL": MARKER_TTL}
        if last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
        return await self._acks.publish_headed_soon(self._subject(key), b"", headers)

    async def _send_forget(self, job_id: str, last: int | None) -> asyncio.Future[Msg]:
        """Send the removal of ``job_id``'s run record (conditional on revision ``last`` unless
        None), as ``_send_delete`` does, but as a purge: its marker is gone in a second
        (``RECORD_MARKER_TTL``). A publish like a delete, so ordered with the writes sent
        before and after it on this connection. No ``Nats-Rollup`` (nats-py's ``purge`` sends
        one): the bucket keeps one message per key, so the marker replaces the record anyway,
        and the purge does not depend on the bucket allowing rollups."""
        headers = {"KV-Operation": "PURGE", "Nats-TTL": RECORD_MARKER_TTL}
        if last is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last)
        subject = self._subject(run_key(job_id))
        return await self._acks.publish_headed_soon(subject, b"", headers)

    # --- records of running jobs
    async def record_run(self, record: RunRecord, timeout: float | None = None) -> None:
        subject = self._subject(run_key(record.job_id))
        await self._acks.publish_headed(subject, msgspec.json.encode(record), None, timeout)

    async def forget_run(self, job_id: str) -> None:
        await _deleted(await self._send_forget(job_id, None))

    async def run_record(self, job_id: str) -> RunRecord | None:
        """One running job's record, if it has one."""
        raw, _ = await self._read_raw(run_key(job_id))
        return None if raw is None else self._record(run_key(job_id), raw)

    async def holder(self, job_id: str) -> RunRecord | None:
        """The record of the runner holding ``job_id``'s slot now (its run record names a slot
        whose live lease is the job's), or None."""
        record = await self.run_record(job_id)
        if record is None:
            return None
        lease = await self.current(record.slot_key)
        if lease is None or lease.value.job_id != job_id or lease.value.phase != "held":
            return None
        return record

    async def run_records(self) -> list[RunRecord]:
        """Every running job's record, read from the server (not from a watcher's memory)."""
        kv = await self.kv()
        records: list[RunRecord] = []
        # Its watch's consumer and subscription go however the read ends: nats-py's watch left
        # both when cancelled while it was made, and its ``stop`` waited for the UNSUB unbounded.
        for entry in await keywatch.current_entries(kv, ("run.>",), 5.0):
            if entry.value and entry.operation is None:
                record = self._record(entry.key, entry.value)
                if record is not None:
                    records.append(record)
        return records

    # --- the queue of a lock (busy policy "queue")
    async def enqueue(self, lock: str, job_id: str, job_type: str) -> int:
        """Put a job at the end of its lock's queue; its revision is its place."""
        key = queue_key(lock, job_id)
        entry = QueueEntry(job_id=job_id, job_type=job_type, queued_at=time.time())
        try:
            return await self._write(key, entry, await self.last_revision(key), ttl=False)
        except KeyWrongLastSequenceError:
            return 0  # already queued

    async def enqueue_many(
        self, lock: str, jobs: Sequence[tuple[str, str]], timeout: float = ENQUEUE_ACK_SECONDS
    ) -> None:
        """Put jobs (job id, job type) at the end of their lock's queue, in this order (a batch).

        Pipelined on one connection, which the server stores in the order sent: the revisions,
        the jobs' places, follow the list. Unconditional, unlike ``enqueue``: a job queued again
        moves behind the others, still in list order. Raises TimeoutError when the server has
        not confirmed every entry within ``timeout`` (the caller answers with an error; a retry
        queues the batch again, in order).
        """
        now = time.time()
        futures = [
            await self._js.publish_async(
                self._subject(queue_key(lock, job_id)),
                msgspec.json.encode(QueueEntry(job_id=job_id, job_type=job_type, queued_at=now)),
            )
            for job_id, job_type in jobs
        ]
        # Wall time on purpose: the caller's (a request's) own deadline, and a miss only answers
        # an error that a retry undoes; no server is counted gone.
        async with asyncio.timeout(timeout):
            await asyncio.gather(*futures)

    async def dequeue(self, lock: str, job_id: str, revision: int | None = None) -> None:
        """Take a job out of its lock's queue; with ``revision``, only the entry of that
        revision (raises ``KeyWrongLastSequenceError`` if the job was queued again since)."""
        await self._delete(queue_key(lock, job_id), revision)

    async def dequeue_many(self, lock: str, job_ids: Sequence[str]) -> None:
        """Take many jobs out of a lock's queue at once (a failed batch's): the deletes are
        pipelined, not one round trip each. One whose ack does not come is deleted again."""
        headers = {"KV-Operation": "DEL", "Nats-TTL": MARKER_TTL}
        futures = [
            await self._js.publish_async(
                self._subject(queue_key(lock, job_id)), b"", headers=headers
            )
            for job_id in job_ids
        ]
        for job_id, future in zip(job_ids, futures, strict=True):
            try:
                # Wall time on purpose: a miss only deletes the entry again (idempotent).
                await asyncio.wait_for(future, PIPELINED_ACK_WAIT)
            except Exception:
                await self.dequeue(lock, job_id)


def still_ours(current: Lease | None, lease: Lease, revision: int) -> TypeGuard[Lease]:
    """Does the key, read as ``current`` after a write naming ``revision`` was refused, still
    hold ``lease``'s holder's lease, at that revision or a newer one (a write of ours stored
    late)? No: the lease was lost, expired and taken or released, and is never written again."""
    return (
        current is not None
        and current.revision >= revision
        and same_holder(current.value, lease.value)
    )


def same_holder(a: SlotValue, b: SlotValue) -> bool:
    """Held for the same job by the same runner process (a runner handles a job only once)."""
    return (
        a.phase == b.phase == "held"
        and a.job_id == b.job_id
        and a.runner_id == b.runner_id
        and a.host == b.host
        and a.runner_pid == b.runner_pid
        and a.runner_started == b.runner_started
    )


def hostname() -> str:
    return socket.gethostname()


async def _deleted(sent: asyncio.Future[Msg]) -> None:
    """Wait for a delete's ack (``SlotTable._send_delete``); a refusal for the key's revision
    raises ``KeyWrongLastSequenceError``, as ``kv.delete`` does."""
    try:
        ackinbox.read_ack(await sent)
    except Exception as exc:
        if getattr(exc, "err_code", None) in (10071, 10164):
            raise KeyWrongLastSequenceError(description=str(exc)) from None
        raise
