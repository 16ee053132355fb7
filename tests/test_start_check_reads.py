"""A job's start check reads its last status and its cancel at once, beside the writes of its
lease or run record: when one of them fails, nothing of the others is left running after the
job's handling has given up (``together.both``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import Lease, SlotTable, SlotValue, slot_key
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.claim import Claimed, SlotClaimer
from jobrunner.services.runner.executor import JobExecutor
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.lease import LeaseKeeper
from jobrunner.services.runner.orphans import ToolLedger
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.running import RunnerIdentity, RunningJob

_READS = {JobJournal.newest.__qualname__, JobJournal.last_event.__qualname__}
_RECORDING = {JobExecutor._retry.__qualname__}
_CLAIM_WRITES = {SlotTable.create_recorded.__qualname__, SlotTable._write.__qualname__}


def _running(coroutines: set[str]) -> list[asyncio.Task[Any]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") in coroutines
    ]


async def _stopped_under(nc: NATS, server: EmbeddedNats) -> None:
    """``server`` stopped, and ``nc`` knows it: what it sends now waits in its buffer."""
    server.stop()
    async with asyncio.timeout(10):
        while nc.is_connected:  # noqa: ASYNC110  # nats-py's state: no event to wait on
            await asyncio.sleep(0.01)


def _reads_running() -> list[asyncio.Task[Any]]:
    return _running(_READS)


async def test_a_failed_start_check_read_leaves_no_other_read_running(
    own_nats: EmbeddedNats,
) -> None:
    """NATS away, nats-py's buffer for the next connection holding exactly one read: the status
    read is held for the new connection, the cancel read is refused at once
    (``OutboundBufferLimitError``). The start check fails with that error, and the held read is
    withdrawn with it (``asyncio.gather`` left it waiting for NATS to come back)."""
    settings = Settings(nats_url=own_nats.url, prefix="startreads")
    names = Names(settings.prefix)
    job_id = "starting-job"
    # The message-get request each read sends (the two differ only in the kind, of one length).
    read = msgspec.json.encode({"last_by_subj": names.job_kind_subject(job_id, "status")})
    nc = await eventstore.connect(settings, "runner", pending_size=len(read))
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        journal = JobJournal(nc, js, names, "runner-test")
        assert await journal.last_status(job_id) is None  # the ack inbox subscribed
        slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
        claimer = SlotClaimer(
            slots,
            LockBoard(),
            journal,
            RunnerIdentity.of_this_process(),
            asyncio.Semaphore(1),
            1.0,
            QueueOrphans(slots, journal, 60.0),
        )
        # Not a JetStream delivery: its stream sequence unknown, both reads are made.
        job = RunningJob(job_id, cast("Any", None))
        await _stopped_under(nc, own_nats)
        assert nc.pending_data_size == 0  # room for the first read only
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await claimer._seen_at_first_delivery(job)
        # The status read got into the buffer: a read was held, so the check below means something.
        assert nc.pending_data_size > 0, "no read held"
        assert _reads_running() == []
    finally:
        await eventstore.close(nc)


async def test_a_failed_start_check_leaves_no_run_record_write_running(
    own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """NATS away and nats-py's buffer for the next connection full: the executor's start check
    (its reads beside the run record's write) fails, and the record's write, retrying while
    the lease lasts, has ended with it. Left running (cancelled, not waited for), a write that
    swallowed its cancel could store the record after the job was given back: a record
    without a lease, which the sweep takes for a lost job."""
    settings = Settings(nats_url=own_nats.url, prefix="startrecord")
    names = Names(settings.prefix)
    job_id = "starting-job"
    nc = await eventstore.connect(settings, "runner", pending_size=1)  # nothing fits
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        journal = JobJournal(nc, js, names, "runner-test")
        slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
        executor = JobExecutor(
            settings,
            nc,
            slots,
            journal,
            RunnerIdentity.of_this_process(),
            ToolLedger(tmp_path / "ledger"),
        )
        lease = Lease(
            key=slot_key(None, job_id), revision=1, value=SlotValue(job_id=job_id, phase="held")
        )
        # Not started: the lease stays "not lost", so the record's write retries on.
        keeper = LeaseKeeper(slots, lease, settings.lease_ttl_seconds, _nothing)
        await _stopped_under(nc, own_nats)
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await executor._check(job_id, Claimed(lease), keeper)
        assert _running(_RECORDING) == []
    finally:
        await eventstore.close(nc)


async def _nothing() -> None:
    pass


async def test_a_failed_read_beside_a_claim_at_once_leaves_no_lease_write_running(
    own_nats: EmbeddedNats,
) -> None:
    """NATS away, nats-py's buffer for the next connection holding the lease's write alone: the
    claim at a first delivery writes the lease (held for the new connection) while its reads
    are refused at once. The claim fails with that error, and the lease's write is withdrawn
    with it (left running, it could store the lease while give_back undoes the claim)."""
    settings = Settings(nats_url=own_nats.url, prefix="claimwrites")
    names = Names(settings.prefix)
    job_id = "claimed-job"
    value = SlotValue(job_id=job_id, phase="held")
    # Room for the lease's write only: the run record's and the reads' are refused.
    nc = await eventstore.connect(settings, "runner", pending_size=len(msgspec.json.encode(value)))
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        journal = JobJournal(nc, js, names, "runner-test")
        slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
        claimer = SlotClaimer(
            slots,
            LockBoard(),
            journal,
            RunnerIdentity.of_this_process(),
            asyncio.Semaphore(1),
            1.0,
            QueueOrphans(slots, journal, 60.0),
        )
        request = events.JobRequested(job_id=job_id, job_type="t", occurred_at=datetime.now(UTC))
        job = RunningJob(job_id, cast("Any", None))
        await _stopped_under(nc, own_nats)
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await claimer._claim_at_once(request, job, slot_key(None, job_id), value)
        assert nc.pending_data_size > 0, "no lease write held"
        assert _running(_CLAIM_WRITES) == []
    finally:
        await eventstore.close(nc)
