"""Ending what dead runners left behind: their tools' process groups and their jobs.

The same periodic sweep drops the queue head of a job that was never stored (see
``sweep_queues``).

Three ways a runner learns of a dead one: at start, from this host's tool ledger and the leases of
runners on this host that are no longer alive; while it runs, from every lease that expires (its
runner stopped renewing it); and by a periodic sweep of the running jobs' records, which finds a
job without a live lease whatever died and whenever (every runner down while the lease expired, a
crashed watcher, an internal job that no ledger knows). A fourth is in ``requests``: a started
job's request delivered again while no lease holds it. However found, a lost job ends FAILED
(``RUNNER_LOST``), or CANCELLED when a cancel of it is stored: its runner died before acting on
it (``JobJournal.end_lost``).

Ending a job is idempotent: every end of one job carries its one terminal event id, and a job
whose last status is already terminal is not ended again (its runner stored the end and died, or
NATS paused, before the lease was released): the stream drops an id it stored before only within
its duplicate window (2 minutes), and a lease or a record may be found long after the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Container

import structlog

from jobrunner.common import retry, together
from jobrunner.common.slots import RunRecord, SlotTable, SlotValue, same_holder
from jobrunner.contracts.events import (
    TERMINAL_STATUSES,
    CancelRequested,
    ErrorCode,
    ErrorInfo,
    JobStatus,
    StatusChanged,
)
from jobrunner.services.runner import orphans
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.running import RunnerIdentity

log = structlog.get_logger()


class LostJobSweeper:
    def __init__(
        self,
        slots: SlotTable,
        board: LockBoard,
        journal: JobJournal,
        identity: RunnerIdentity,
        ledger: orphans.ToolLedger,
        handling: Container[str],
        queue_orphans: QueueOrphans,
    ) -> None:
        self.slots = slots
        self.board = board
        self.journal = journal
        self.identity = identity
        self.ledger = ledger
        # The ids of the jobs this runner is handling (alive, whatever their lease says).
        self.handling = handling
        # Drops the queue heads never stored (shared with the claimer).
        self.queue_orphans = queue_orphans

    async def clean_up_after_crash(self) -> None:
        """Before taking work: end what a dead runner on this host left behind."""
        lost = ErrorInfo(
            code=ErrorCode.RUNNER_LOST,
            message="The runner running this job stopped; a runner starting on its host "
            "ended the job's processes.",
        )
        for job_id in self.ledger.end_orphans():
            log.warning("orphaned tool ended at start", orphan_job_id=job_id)
            # Its lease may have expired while no runner was watching: end the job here.
            status, cancel = await self._lost_job_state(job_id)
            if status is not None and status.status == JobStatus.RUNNING:
                await self.journal.end_lost(job_id, cancel, lost)
                await self.slots.forget_run(job_id)
        for key, value in list(self.board.slots.items()):
            if value.phase != "held" or not self.identity.is_dead_local_runner(value):
                continue
            if value.pgid:
                orphans.kill_group(value.pgid, value.started, value.boot_id)
            lease = await self.slots.current(key)
            # The dead runner's own lease only: once it expired, a live runner may have taken
            # the same job's slot (the board not updated yet), and release follows that
            # holder's renewals (SlotTable.release).
            if lease is None or not same_holder(lease.value, value):
                continue
            await self._end_lost(value.job_id, lost, value.job_type)
            await self.slots.release(lease)

    async def on_lease_expired(self, value: SlotValue) -> None:
        """Every runner watches every lease: one that expires means its runner is gone."""
        if value.phase != "held" or value.job_id in self.handling:
            return  # a reservation, or ours and alive: the keeper notices a lost lease itself
        log.warning("runner lost", lost_job_id=value.job_id, lost_runner=value.runner_id)
        if value.host == self.identity.host and value.pgid:
            orphans.kill_group(value.pgid, value.started, value.boot_id)
        await self._end_lost(value.job_id, _lost_error(value.runner_id))

    async def sweep_every(self, interval: float, stop: asyncio.Event) -> None:
        """Sweep now, then every ``interval`` until ``stop``; a failed sweep is tried again."""
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("sweep for lost jobs failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def sweep(self) -> None:
        """End every job that has started but whose slot holds no lease for it, then drop the
        queue heads never stored (``sweep_queues``)."""
        try:
            await self._sweep_round()
        except Exception as exc:
            if retry.is_transient(exc):
                # NATS away: a head's request may be missing only because its publish could
                # not land meanwhile. Its age counts again from the next time NATS answers.
                self.queue_orphans.restart()
            raise

    async def _sweep_round(self) -> None:
        for record in await self.slots.run_records():
            try:
                await self.sweep_record(record)
            except Exception as exc:
                if retry.is_transient(exc):
                    raise  # NATS away: the round stops, as it would for every record
                # One record the sweep cannot settle must not keep it from the others: it is
                # tried again next round.
                log.warning("sweep of a run record failed", job_id=record.job_id, error=repr(exc))
        await self.sweep_queues()

    async def sweep_queues(self) -> None:
        """Drop the head of each lock's queue that is an orphan (``QueueOrphans``): the API kept
        the entry after a publish whose outcome it could not know (a lost ack), and the request
        was not stored after all. The lock's next waiting job drops such a head
        (``SlotClaimer._is_queue_head``); with no job waiting it would stay in the lock bucket,
        on the lock board and in ``jobrunner_jobs_queued`` until one came.

        The head only, as the claimer: the entries behind it may belong to jobs whose requests
        are still on their way (a batch's entries share one stamp and its requests are stored
        in order; an outage in the middle of its publish), and they keep their places until
        they come first."""
        if not self.board.ready.is_set():
            return  # a watch replaying the bucket: its queues are not whole yet
        heads = {lock_key: self.board.first(lock_key) for lock_key in list(self.board.queues)}
        self.queue_orphans.keep_only([lock_key for lock_key, first in heads.items() if first])
        for lock_key, first in heads.items():
            if first is None:
                continue
            revision, entry = first
            lock = lock_key.removeprefix("slot.")
            try:
                await self.queue_orphans.drop_if_orphan(lock, revision, entry)
            except Exception as exc:
                if retry.is_transient(exc):
                    raise  # NATS away: the round stops, as it would for every lock
                # One lock the sweep cannot settle must not keep it from the others.
                log.warning("sweep of a lock's queue failed", lock=lock_key, error=repr(exc))

    async def sweep_record(self, record: RunRecord) -> None:
        """End the job of ``record``, read by a sweep, if its runner is gone."""
        if record.job_id in self.handling:
            return  # ours and alive: its keeper notices a lost lease itself
        if await self._has_live_lease(record):
            return
        if await self.slots.run_record(record.job_id) != record:
            # Removed (or written again) since the sweep read it: its runner gave the job
            # back (a claim undone after a NATS outage, the record removed before the lease)
            # or ended it, or another runner took it.
            return
        if await self._end_lost(record.job_id, _lost_error(record.runner_id)):
            log.warning("swept a lost job", lost_job_id=record.job_id)

    async def _has_live_lease(self, record: RunRecord) -> bool:
        lease = await self.slots.current(record.slot_key)
        return lease is not None and lease.value.job_id == record.job_id

    async def _end_lost(self, job_id: str, error: ErrorInfo, job_type: str = "") -> bool:
        """End the job of a gone runner (True; ``JobJournal.end_lost``), unless it ended
        already (its runner died, or NATS paused, after storing the end and before removing
        the record and the lease): then only its record goes."""
        status, cancel = await self._lost_job_state(job_id)
        ending = status is None or status.status not in TERMINAL_STATUSES
        if ending:
            await self.journal.end_lost(job_id, cancel, error, job_type)
        await self.slots.forget_run(job_id)
        return ending

    async def _lost_job_state(
        self, job_id: str
    ) -> tuple[StatusChanged | None, CancelRequested | None]:
        """A lost job's last status and its cancel, read together: on an expired lease this
        runs inline in the lock board's watch."""
        return await together.both(self.journal.last_status(job_id), self.journal.cancel_of(job_id))


def _lost_error(runner_id: str | None) -> ErrorInfo:
    return ErrorInfo(
        code=ErrorCode.RUNNER_LOST,
        message=f"Runner {runner_id} stopped renewing its lease; the job did not finish.",
    )
