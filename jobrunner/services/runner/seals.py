"""Waiting for a batch's seal: no job of a batch starts before its BatchSealed is stored.

The API publishes BatchSealed only once every JobRequested of the batch is stored, so a batch
whose submission died half-way never runs a part of itself. Its jobs wait here without holding
capacity (like a job waiting for its lock), and one that is still unsealed
``batch_seal_timeout_seconds`` after its JobRequested ends FAILED with BATCH_INCOMPLETE: the
client is told to send the batch again with the same Idempotency-Key.

Which batches are sealed is learnt once per batch: from the stream (the last message on the
batch's ``sealed`` subject) and from a plain subscription to every seal as it is stored, so ten
thousand waiting jobs of one batch ask the stream at most once per ``recheck_seconds``.

A sealed batch that was failed (a BatchFailed not followed by a BatchRestarted) starts nothing
either: a job whose JobRequested reached the stream only after the fail (a retried submission
completing a batch that an operator had already failed) ends cancelled instead of running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jobrunner.common.lastevent import last_readable
from jobrunner.common.slots import SlotTable
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.contracts.names import Names
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.running import RunningJob

log = structlog.get_logger()

# Sealed batch ids remembered (a seal is final: forgetting one only costs a look-up).
REMEMBERED_SEALS = 10_000


class BatchSeals:
    """Which batches are sealed, as far as this runner has seen."""

    def __init__(self, js: JetStreamContext, names: Names, recheck_seconds: float) -> None:
        self._js = js
        self._names = names
        self._recheck = recheck_seconds
        self._sealed: OrderedDict[str, None] = OrderedDict()
        self._checked_at: dict[str, float] = {}
        self._lookups: dict[str, asyncio.Future[bool]] = {}
        self._waiting: dict[str, asyncio.Event] = {}
        self._failures: dict[str, tuple[float, events.BatchFailed | None]] = {}
        self._failure_lookups: dict[str, asyncio.Future[events.BatchFailed | None]] = {}

    async def subscribe(self, nc: NATS) -> Any:
        """Hear every seal as it is stored (the stream's subjects are plain subjects too)."""
        return await nc.subscribe(self._names.batch_kind_subject("*", "sealed"), cb=self._on_seal)

    async def _on_seal(self, msg: Msg) -> None:
        try:
            event = codec.decode(msg.data)
        except msgspec.MsgspecError:
            return
        # Another batch's seal on this batch's subject was not written by jobrunner.
        if isinstance(event, events.BatchSealed) and msg.subject == self._names.subject(event):
            self._mark(event.batch_id)

    def _mark(self, batch_id: str) -> None:
        self._sealed[batch_id] = None
        self._sealed.move_to_end(batch_id)
        if len(self._sealed) > REMEMBERED_SEALS:
            self._sealed.popitem(last=False)
        self._checked_at.pop(batch_id, None)
        waiting = self._waiting.pop(batch_id, None)
        if waiting is not None:
            waiting.set()

    async def is_sealed(self, batch_id: str, fresh: bool = False) -> bool:
        """Known sealed, or found sealed in the stream. The stream is asked at most once per
        ``recheck_seconds`` per batch unless ``fresh``; waiters of one batch share the look-up."""
        if batch_id in self._sealed:
            return True
        lookup = self._lookups.get(batch_id)
        if lookup is None:
            checked = self._checked_at.get(batch_id)
            if not fresh and checked is not None and time.monotonic() - checked < self._recheck:
                return False
            lookup = asyncio.ensure_future(self._look_up(batch_id))
            self._lookups[batch_id] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(batch_id, None))
        return await asyncio.shield(lookup)

    async def _look_up(self, batch_id: str) -> bool:
        subject = self._names.batch_kind_subject(batch_id, "sealed")
        # A message there not written by jobrunner seals nothing (``lastevent``); a flood of
        # them past a read's bounds does not stop the batch's jobs for good (``best_effort``).
        found = (
            await last_readable(
                self._js,
                self._names.stream,
                subject,
                events.BatchSealed,
                batch_id,
                best_effort=True,
            )
            is not None
        )
        if found:
            self._mark(batch_id)
        else:
            if len(self._checked_at) > REMEMBERED_SEALS:
                self._checked_at.clear()
            self._checked_at[batch_id] = time.monotonic()
        return found

    async def failed_by(self, batch_id: str) -> events.BatchFailed | None:
        """The BatchFailed that stops the batch's jobs from starting: its last one, unless a
        BatchRestarted came after it. Asked at most once per ``recheck_seconds`` per batch, and
        once for all its waiters: a sealed batch of thousands wakes them all at once, and as many
        look-ups at once held up the runner's lease renewals behind them."""
        checked = self._failures.get(batch_id)
        if checked is not None and time.monotonic() - checked[0] < self._recheck:
            return checked[1]
        lookup = self._failure_lookups.get(batch_id)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up_failure(batch_id))
            self._failure_lookups[batch_id] = lookup
            lookup.add_done_callback(lambda _: self._failure_lookups.pop(batch_id, None))
        return await asyncio.shield(lookup)

    async def _look_up_failure(self, batch_id: str) -> events.BatchFailed | None:
        # Messages there not written by jobrunner neither fail nor restart it (``lastevent``),
        # nor does a flood of them past a read's bounds stop its jobs for good (``best_effort``).
        stream, names = self._names.stream, self._names
        failed = await last_readable(
            self._js,
            stream,
            names.batch_kind_subject(batch_id, "failed"),
            events.BatchFailed,
            batch_id,
            best_effort=True,
        )
        stopped: events.BatchFailed | None = None
        if failed is not None:
            restarted = await last_readable(
                self._js,
                stream,
                names.batch_kind_subject(batch_id, "restarted"),
                events.BatchRestarted,
                batch_id,
                best_effort=True,
            )
            if restarted is None or restarted[0] < failed[0]:
                stopped = failed[1]
        if len(self._failures) > REMEMBERED_SEALS:
            self._failures.clear()
        self._failures[batch_id] = (time.monotonic(), stopped)
        return stopped

    async def wait_change(self, batch_id: str, timeout: float) -> None:
        """Until the batch is heard sealed (or ``timeout``)."""
        event = self._waiting.setdefault(batch_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class SealWaiter:
    """Holds a batch job back until its batch is sealed."""

    def __init__(
        self,
        seals: BatchSeals,
        slots: SlotTable,
        journal: JobJournal,
        capacity: asyncio.Semaphore,
        timeout_seconds: float,
        recheck_seconds: float,
    ) -> None:
        self.seals = seals
        self.slots = slots
        self.journal = journal
        self.capacity = capacity
        self.timeout = timeout_seconds
        self.recheck = recheck_seconds

    async def wait(self, request: events.JobRequested, job: RunningJob) -> bool:
        """True once the job's batch is sealed; False when the job ended while it waited
        (cancelled, by a user or by its batch's fail, or BATCH_INCOMPLETE), its request then
        acknowledged, or when its runner began to stop (its request given back)."""
        batch_id = request.batch_id
        assert batch_id is not None
        deadline = request.occurred_at.timestamp() + self.timeout
        while True:
            if await self.seals.is_sealed(batch_id):
                failed = await self.seals.failed_by(batch_id)
                if failed is None:
                    return True
                log.info("batch failed before this job could start", batch_id=batch_id)
                await self._end(request, job, JobStatus.CANCELLED, cancelled_by=failed.requested_by)
                return False
            if job.left_for_next_runner:
                # Its runner stops: the job waits for its seal on the runner that takes it next.
                await job.leave_for_next_runner()
                return False
            if job.cancel_event.is_set():
                await self._end(request, job, JobStatus.CANCELLED, cancelled_by=job.cancelled_by)
                return False
            left = deadline - time.time()
            if left <= 0:
                if await self.seals.is_sealed(batch_id, fresh=True):
                    return True
                log.warning("batch never sealed", batch_id=batch_id)
                await self._end(request, job, JobStatus.FAILED, incomplete_error(self.timeout))
                return False
            if job.holds_capacity:
                # Waiting for the seal takes no capacity: other jobs may run meanwhile.
                self.capacity.release()
                job.holds_capacity = False
            await job.msg.in_progress()
            waits = [
                asyncio.ensure_future(self.seals.wait_change(batch_id, min(self.recheck, left))),
                asyncio.ensure_future(job.interrupted.wait()),
            ]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()

    async def _end(
        self,
        request: events.JobRequested,
        job: RunningJob,
        status: JobStatus,
        error: ErrorInfo | None = None,
        cancelled_by: str | None = None,
    ) -> None:
        await self.journal.end(
            request.job_id,
            status,
            error=error,
            cancelled_by=cancelled_by,
            job_type=request.job_type,
        )
        if request.lock:
            await self.slots.dequeue(request.lock, request.job_id)
        await job.ack()


def incomplete_error(timeout: float) -> ErrorInfo:
    return ErrorInfo(
        code=ErrorCode.BATCH_INCOMPLETE,
        message=f"This job's batch was not completely submitted within {timeout:g} s, so none "
        "of its jobs ran; submit the batch again with the same Idempotency-Key.",
    )
