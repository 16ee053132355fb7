"""Ending what dead runners left behind: their tools' process groups and their jobs.

Two ways a runner learns of a dead one: at start, from this host's tool ledger and the leases of
runners on this host that are no longer alive; and while it runs, from every lease that expires
(its runner stopped renewing it).
"""

from __future__ import annotations

from collections.abc import Container

import structlog

from jobrunner.common.slots import SlotTable, SlotValue
from jobrunner.contracts.events import ErrorCode, ErrorInfo, JobStatus
from jobrunner.services.runner import orphans
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.journal import JobJournal
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
    ) -> None:
        self.slots = slots
        self.board = board
        self.journal = journal
        self.identity = identity
        self.ledger = ledger
        # The ids of the jobs this runner is handling (alive, whatever their lease says).
        self.handling = handling

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
            status = await self.journal.last_status(job_id)
            if status is not None and status.status == JobStatus.RUNNING:
                await self.journal.end(job_id, JobStatus.FAILED, error=lost)
        for key, value in list(self.board.slots.items()):
            if value.phase != "held" or not self.identity.is_dead_local_runner(value):
                continue
            if value.pgid:
                orphans.kill_group(value.pgid, value.started, value.boot_id)
            lease = await self.slots.current(key)
            if lease is None or lease.value.job_id != value.job_id:
                continue
            await self.journal.end(value.job_id, JobStatus.FAILED, error=lost)
            await self.slots.release(lease)

    async def on_lease_expired(self, value: SlotValue) -> None:
        """Every runner watches every lease: one that expires means its runner is gone."""
        if value.phase != "held" or value.job_id in self.handling:
            return  # a reservation, or ours and alive: the keeper notices a lost lease itself
        log.warning("runner lost", lost_job_id=value.job_id, lost_runner=value.runner_id)
        if value.host == self.identity.host and value.pgid:
            orphans.kill_group(value.pgid, value.started, value.boot_id)
        await self.journal.end(
            value.job_id,
            JobStatus.FAILED,
            error=ErrorInfo(
                code=ErrorCode.RUNNER_LOST,
                message=f"Runner {value.runner_id} stopped renewing its lease; "
                "the job did not finish.",
            ),
        )
