"""Claiming a job's slot: a lease in the lock bucket, or a wait for one.

A busy slot is waited for without holding capacity (other jobs may run meanwhile); for a
``queue`` type only the head of the lock's queue may take the slot when it frees.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import structlog
from nats.js.errors import KeyWrongLastSequenceError

from jobrunner.common import together
from jobrunner.common.jobtypes import JobType
from jobrunner.common.slots import Lease, SlotTable, SlotValue, slot_key
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.running import RunnerIdentity, RunningJob

log = structlog.get_logger()


class StartCheck(NamedTuple):
    """What a job's start depends on, read once its slot is held (or as it is taken): its last
    status and last cancel event, and the stream sequence of its status subject's last message
    (0: none), on which its ``running`` is stored conditionally (see ``executor``); None when
    the read found only messages jobrunner did not write (``Newest.condition``)."""

    status: events.AnyEvent | None
    cancel: events.AnyEvent | None
    status_last: int | None


async def read_start_check(journal: JobJournal, job_id: str) -> StartCheck:
    """The job's last status and cancel, read at once; neither left running when the other
    fails (a read held for NATS's return after its job's handling gave up)."""
    status, cancel = await together.both(
        journal.newest(job_id, "status"), journal.last_event(job_id, "cancel")
    )
    return StartCheck(status.event, cancel, status.condition)


@dataclass(frozen=True)
class Claimed:
    """A job's slot, held, and what was done for the job in the same round trip."""

    lease: Lease
    # The job's run record is stored (written with the lease).
    recorded: bool = False
    # The job's start check, read while the lease was written (at a first delivery); None: not
    # read yet.
    seen: StartCheck | None = None


def is_queued(request: events.JobRequested, job_type: JobType) -> bool:
    """Does the job wait in its lock's queue? Inside a batch a lock is always queued, "reject"
    too: the batch's jobs were queued in batch order by the API, and refusing one would fail a
    batch that was accepted."""
    return bool(request.lock) and (job_type.on_busy == "queue" or request.batch_id is not None)


class SlotClaimer:
    def __init__(
        self,
        slots: SlotTable,
        board: LockBoard,
        journal: JobJournal,
        identity: RunnerIdentity,
        capacity: asyncio.Semaphore,
        recheck_seconds: float,
        queue_orphans: QueueOrphans,
    ) -> None:
        self.slots = slots
        self.board = board
        self.journal = journal
        self.identity = identity
        self.capacity = capacity
        # How often a waiting job looks again (and tells NATS it is still in progress).
        self.recheck_seconds = recheck_seconds
        # Drops the head of a job's queue whose request never came (shared with the sweep).
        self.queue_orphans = queue_orphans

    async def claim(
        self, request: events.JobRequested, job_type: JobType, job: RunningJob
    ) -> Claimed | None:
        """The job's slot once it may run; None when it ended (cancelled) while waiting."""
        job.claiming = True
        job_id = request.job_id
        key = slot_key(request.lock, job_id, request.attempt_of)
        value = self.identity.held_value(job_id, request.job_type)
        # Only while the job holds its unit of capacity: one that gave it back while it
        # waited (for its batch's seal) takes it again in the loop below before its slot, or a
        # sealed batch of a thousand jobs would start them all at once, past
        # max_concurrent_jobs.
        at_once = not request.lock and request.attempt_of is None and job.first_delivery
        if at_once and job.holds_capacity:
            first = await self._claim_at_once(request, job, key, value)
            if first is not None:
                return first
        queued = is_queued(request, job_type)
        # A job without a lock, at its first attempt, has a slot no one wrote before.
        fresh = not request.lock and request.attempt_of is None
        # Such a job takes its slot at once; a cancel stored before is then found by the check
        # made once the slot is held (executor): no read of it here, one round trip less before
        # the job starts. Should the slot be taken after all, the loop looks for a cancel before
        # it waits.
        look_for_cancel = not fresh
        # Whether the job has waited in this handling: its request may have come back to
        # another runner meanwhile (a stall past the ack wait), which may have run it.
        waited = False
        while True:
            if job.left_for_next_runner:
                # Its runner stops before the job could start: not ended, it keeps its place
                # in its lock's queue (or its reservation) for the runner that takes it next.
                await job.leave_for_next_runner()
                return None
            cancelled = job.cancel_event.is_set() or (
                look_for_cancel and await self.journal.last_event(job_id, "cancel") is not None
            )
            if cancelled:
                await self.journal.end(
                    job_id,
                    JobStatus.CANCELLED,
                    cancelled_by=job.cancelled_by,
                    job_type=request.job_type,
                )
                if request.lock:
                    await self.slots.dequeue(request.lock, job_id)
                    if not queued:  # a reservation a give-back put back (``give_back``)
                        await self.slots.drop_reservation(key, job_id)
                await job.ack()
                return None
            if queued and await self._taken_elsewhere(request, key, job, waited):
                await job.ack()
                return None
            may_take = not queued or await self._is_queue_head(request, key)
            if may_take and not job.holds_capacity and not await self._take_capacity(job):
                # Only capacity is missing: the job waits on for it, its request kept in
                # progress, and nothing is asked of NATS meanwhile. The thousand jobs of a
                # sealed batch wait here at once: a look-up each per wait held the runner's
                # lease renewals up behind them. A cancel reaches a waiting job through
                # cancel_event, and one missed is found once its slot is held (executor).
                await job.msg.in_progress()
                waited = True
                continue
            if may_take:
                lease = await self.slots.try_acquire(key, value, fresh=fresh)
                if lease is not None:
                    # The job keeps its queue entry until it starts (executor): should its
                    # start fail (NATS away), the slot is given back and the job is still
                    # the queue's head, taking the slot again when its request comes back.
                    return Claimed(lease)
            if not look_for_cancel:
                look_for_cancel = True
                continue  # not taken at once: a cancel is looked for before waiting
            if job.holds_capacity:
                # Waiting for a slot takes no capacity: other jobs may run meanwhile.
                self.capacity.release()
                job.holds_capacity = False
            await job.msg.in_progress()
            waited = True
            waits = [
                asyncio.ensure_future(self.board.wait_change(key, self.recheck_seconds)),
                asyncio.ensure_future(job.interrupted.wait()),
            ]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()

    async def give_back(self, request: events.JobRequested, job_type: JobType | None) -> None:
        """Undo the claim of a job whose handling failed before it started (NATS away): its
        lease and run record, should a write that timed out have been stored after all. A
        ``reject`` lock's lease becomes the API's reservation again; a queued job's entry,
        removed only once the job starts, is still in its place."""
        key = slot_key(request.lock, request.job_id, request.attempt_of)
        reserved = bool(request.lock) and job_type is not None and not is_queued(request, job_type)
        await self.slots.give_back(
            key, self.identity.held_value(request.job_id, request.job_type), reserved
        )

    async def _claim_at_once(
        self, request: events.JobRequested, job: RunningJob, key: str, value: SlotValue
    ) -> Claimed | None:
        """The slot of a job without a lock at its first delivery, in one round trip: its
        lease created and its run record written (pipelined), its last status and cancel read
        meanwhile. None when the slot was written before after all: then claimed as usual.

        Read beside the lease, not after it: at a first delivery no runner can have started
        the job, so what the reads look for (the API cancelled it while pending) is all there
        is, and a cancel stored after them reaches the job as it runs."""
        job_id = request.job_id
        (lease, recorded), seen = await together.both(
            self.slots.create_recorded(key, value, self.identity.run_record(job_id, key)),
            self._seen_at_first_delivery(job),
        )
        if lease is None:
            return None
        return Claimed(lease, recorded=recorded, seen=seen)

    async def _seen_at_first_delivery(self, job: RunningJob) -> StartCheck:
        """The job's start check at its request's first delivery.

        Every status and cancel of a job is stored after its request (the API cancels or ends
        only a job it has seen requested; the API's stream of a job just posted counts on the
        same order): when the job's latest event is the request itself, it has neither. One
        read of the last of all the job's events instead of two, on every job's way to its
        start; when anything came after the request (say the API cancelled it while pending),
        both are read as before. (The status subject is then taken for empty: a foreign message
        stored there before the request has the job's ``running`` refused and read again.)"""
        seq = job.stream_seq
        if seq is not None and await self.journal.is_latest(job.job_id, seq):
            return StartCheck(None, None, 0)
        return await read_start_check(self.journal, job.job_id)

    async def _take_capacity(self, job: RunningJob) -> bool:
        """A unit of capacity for the job; False when none came within ``recheck_seconds`` or
        the job was cancelled (or its runner began to stop) meanwhile."""
        acquiring = asyncio.ensure_future(self.capacity.acquire())
        cancelled = asyncio.ensure_future(job.interrupted.wait())
        try:
            await asyncio.wait(
                {acquiring, cancelled},
                timeout=self.recheck_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            cancelled.cancel()
            # A unit granted just as it is cancelled is given back by the semaphore itself.
            acquiring.cancel()
        await asyncio.wait({acquiring})  # a cancel takes effect at the task's next step
        if acquiring.cancelled():
            return False
        job.holds_capacity = True
        return True

    async def _taken_elsewhere(
        self, request: events.JobRequested, key: str, job: RunningJob, waited: bool
    ) -> bool:
        """Has another runner started (or ended) this queued job, which has left its queue?

        Its request came back there after this runner held it past the ack wait (a stall), and
        the runner that started it removed the queue entry: without this look the job, no
        longer on the board, would be queued again here (``_is_queue_head``), an entry for a
        job that started, and take the slot for nothing. Read only when it could be so: off
        the board, and at a redelivery or after a wait (a first delivery just received is
        only not seen by the board yet)."""
        if not self.board.ready.is_set() or self.board.queued(key, request.job_id):
            return False
        if job.first_delivery and not waited:
            return False
        status = await self.journal.last_status(request.job_id)
        return status is not None and status.status != JobStatus.PENDING

    async def _is_queue_head(self, request: events.JobRequested, key: str) -> bool:
        """Is this job first in its lock's queue? Drops a head that will never come."""
        assert request.lock
        if not self.board.ready.is_set():
            return False
        if not self.board.queued(key, request.job_id):
            # Not (yet) seen by our watcher; put it there if nobody did (idempotent).
            await self.slots.enqueue(request.lock, request.job_id, request.job_type)
            return False
        first = self.board.first(key)
        if first is None or first[1].job_id == request.job_id:
            return True
        revision, head = first
        if await self.queue_orphans.has_started(head.job_id, revision):
            # Started or ended: it should have left the queue. Only the entry the board saw,
            # as an orphan's drop: a newer write of the key is not this one's to remove.
            log.info("dropping a queue entry whose job started", dead_job_id=head.job_id)
            with contextlib.suppress(KeyWrongLastSequenceError):
                await self.slots.dequeue(request.lock, head.job_id, revision)
        else:
            await self.queue_orphans.drop_if_orphan(request.lock, revision, head)
        return False
