"""Publishing a batch: BatchRequested, every JobRequested, then BatchSealed.

Runners start no job of a batch before its BatchSealed is stored, and the seal is published only
once every JobRequested is acknowledged: a submission that dies half-way leaves jobs that never
run (they end BATCH_INCOMPLETE after ``batch_seal_timeout_seconds``) until the same request is
sent again with the same Idempotency-Key and completes the batch.

Every id is derived from the batch id (``common.batchids``), so publishing again is harmless:
JetStream drops an event id it stored within its duplicate window, and a resumed submission first
looks which events the stream already holds and publishes only the missing ones (a retry may come
after that window).

Locks: the queue entries of a batch's locked jobs are written in batch order before the jobs are
published (queue first, publish second, as for one job), so the jobs take their lock in batch
order. A type whose busy policy is ``reject`` queues too inside a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nats.js import JetStreamContext

from jobrunner.common import batchids, eventstore, messagesize, metrics
from jobrunner.common.callbacktoken import CallbackToken, mint
from jobrunner.common.lastevent import last_readable
from jobrunner.common.slots import SlotTable
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.services.api.batchrequest import BatchPlan

# Parallel look-ups when a resumed submission checks which of its events are stored.
LOOKUP_CONCURRENCY = 64


class BatchEvents:
    """The events of one submission, with their derived ids."""

    def __init__(
        self,
        plan: BatchPlan,
        batch_id: str,
        requested_by: str | None,
        callback_token: Callable[[str], CallbackToken] = lambda _: mint(),
    ) -> None:
        self.batch_id = batch_id
        # External jobs' callback tokens, by batch index (only their hashes are published).
        self.callbacks: dict[int, CallbackToken] = {
            index: callback_token(batchids.job_id(batch_id, index))
            for index, job in enumerate(plan.jobs)
            if job.job_type.external
        }
        self.requested = events.BatchRequested(
            batch_id=batch_id,
            event_id=batchids.batch_requested_event_id(batch_id),
            batch_name=plan.batch_name,
            total_jobs=len(plan.jobs),
            job_types=plan.job_types,
            requested_by=requested_by,
        )
        self.jobs = [
            events.JobRequested(
                job_id=(job_id := batchids.job_id(batch_id, index)),
                event_id=batchids.job_requested_event_id(job_id),
                job_type=job.job_type.name,
                parameters=job.parameters,
                lock=job.job_type.lock,
                requested_by=requested_by,
                batch_id=batch_id,
                batch_index=index,
                callback_token_hash=(
                    self.callbacks[index].token_hash if index in self.callbacks else None
                ),
                webhook=job.webhook,
            )
            for index, job in enumerate(plan.jobs)
        ]
        self.sealed = events.BatchSealed(
            batch_id=batch_id,
            event_id=batchids.batch_sealed_event_id(batch_id),
            total_jobs=len(plan.jobs),
        )

    @property
    def job_ids(self) -> list[str]:
        return [job.job_id for job in self.jobs]


async def publish_batch(
    js: JetStreamContext, names: Names, slots: SlotTable, batch: BatchEvents, resumed: bool
) -> int:
    """Publish what of the batch is not stored yet; returns BatchSealed's stream sequence."""
    requested: events.BatchRequested | None = batch.requested
    jobs = batch.jobs
    if resumed:
        # What is stored there is looked for among the messages jobrunner could have written: one
        # that is not (``lastevent``) must not stand for a seal, a request or a job not published.
        batch_id = batch.batch_id
        sealed = await last_readable(
            js,
            names.stream,
            names.batch_kind_subject(batch_id, "sealed"),
            events.BatchSealed,
            batch_id,
        )
        if sealed is not None:
            return sealed[0]
        stored = await last_readable(
            js,
            names.stream,
            names.batch_kind_subject(batch_id, "requested"),
            events.BatchRequested,
            batch_id,
        )
        requested = None if stored is not None else batch.requested
        jobs = await _missing(js, names, jobs)
    # Every message checked before the first is sent: none over max_payload is left half stored.
    every: list[events.Publishable] = [*jobs, batch.sealed]
    for event in every if requested is None else [requested, *every]:
        messagesize.check_fits(js._nc, codec.encode(event), eventstore.headers(event))
    await _enqueue_locked(slots, jobs)
    if requested is not None:
        await eventstore.publish(js, names, requested)
    if jobs:
        await eventstore.publish_many(js, names, jobs)
    sealed_seq = await eventstore.publish(js, names, batch.sealed)
    if requested is not None:  # a resumed submission counted its batch the first time
        metrics.BATCHES_SUBMITTED.inc()
    metrics.BATCH_JOBS_SUBMITTED.inc(len(jobs))
    return sealed_seq


async def _missing(
    js: JetStreamContext, names: Names, jobs: list[events.JobRequested]
) -> list[events.JobRequested]:
    """The jobs whose JobRequested the stream does not hold, in batch order."""
    limit = asyncio.Semaphore(LOOKUP_CONCURRENCY)

    async def stored(job: events.JobRequested) -> bool:
        async with limit:
            subject = names.job_kind_subject(job.job_id, "requested")
            found = await last_readable(js, names.stream, subject, events.JobRequested, job.job_id)
            return found is not None

    found = await asyncio.gather(*(stored(job) for job in jobs))
    return [job for job, there in zip(jobs, found, strict=True) if not there]


async def _enqueue_locked(slots: SlotTable, jobs: list[events.JobRequested]) -> None:
    by_lock: dict[str, list[tuple[str, str]]] = {}
    for job in jobs:
        if job.lock:
            by_lock.setdefault(job.lock, []).append((job.job_id, job.job_type))
    for lock, queued in by_lock.items():
        await slots.enqueue_many(lock, queued)
