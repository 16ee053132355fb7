"""A job's start check reads its last status and its cancel at once, beside the writes of its
lease or run record: when one of them fails, nothing of the others is left running after the
job's handling has given up (``together.both``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec
import nats.errors
import pytest

from jobrunner.common.slots import Lease, SlotTable, SlotValue, slot_key
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.claim import Claimed
from jobrunner.services.runner.executor import JobExecutor
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.lease import LeaseKeeper
from jobrunner.services.runner.orphans import ToolLedger
from jobrunner.services.runner.running import RunnerIdentity, RunningJob
from tests.tools.runner_parts import one_read, runner_parts, running, slot_claimer, stopped_under

_READS = {JobJournal.newest.__qualname__, JobJournal.last_event.__qualname__}
_RECORDING = {JobExecutor._retry.__qualname__}
_CLAIM_WRITES = {SlotTable.create_recorded.__qualname__, SlotTable._write.__qualname__}


async def test_a_failed_start_check_read_leaves_no_other_read_running(
    own_nats: EmbeddedNats,
) -> None:
    """NATS away, nats-py's buffer for the next connection holding exactly one read: the status
    read is held for the new connection, the cancel read is refused at once
    (``OutboundBufferLimitError``). The start check fails with that error, and the held read is
    withdrawn with it (``asyncio.gather`` left it waiting for NATS to come back)."""
    job_id = "starting-job"
    room = one_read(Names("startreads"), job_id)
    async with runner_parts(own_nats, "startreads", pending_size=room) as parts:
        assert await parts.journal.last_status(job_id) is None  # the ack inbox subscribed
        claimer = slot_claimer(parts.slots, parts.journal)
        # Not a JetStream delivery: its stream sequence unknown, both reads are made.
        job = RunningJob(job_id, cast("Any", None))
        await stopped_under(parts.nc, own_nats)
        assert parts.nc.pending_data_size == 0  # room for the first read only
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await claimer._seen_at_first_delivery(job)
        # The status read got into the buffer: a read was held, so the check below means something.
        assert parts.nc.pending_data_size > 0, "no read held"
        assert running(_READS) == []


async def test_a_failed_start_check_leaves_no_run_record_write_running(
    own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """NATS away and nats-py's buffer for the next connection full: the executor's start check
    (its reads beside the run record's write) fails, and the record's write, retrying while
    the lease lasts, has ended with it. Left running (cancelled, not waited for), a write that
    swallowed its cancel could store the record after the job was given back: a record
    without a lease, which the sweep takes for a lost job."""
    job_id = "starting-job"
    async with runner_parts(own_nats, "startrecord", pending_size=1) as parts:  # nothing fits
        settings = parts.settings
        executor = JobExecutor(
            settings,
            parts.nc,
            parts.slots,
            parts.journal,
            RunnerIdentity.of_this_process(),
            ToolLedger(tmp_path / "ledger"),
        )
        lease = Lease(
            key=slot_key(None, job_id), revision=1, value=SlotValue(job_id=job_id, phase="held")
        )
        # Not started: the lease stays "not lost", so the record's write retries on.
        keeper = LeaseKeeper(parts.slots, lease, settings.lease_ttl_seconds, _nothing)
        await stopped_under(parts.nc, own_nats)
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await executor._check(job_id, Claimed(lease), keeper)
        assert running(_RECORDING) == []


async def _nothing() -> None:
    pass


async def test_a_failed_read_beside_a_claim_at_once_leaves_no_lease_write_running(
    own_nats: EmbeddedNats,
) -> None:
    """NATS away, nats-py's buffer for the next connection holding the lease's write alone: the
    claim at a first delivery writes the lease (held for the new connection) while its reads
    are refused at once. The claim fails with that error, and the lease's write is withdrawn
    with it (left running, it could store the lease while give_back undoes the claim)."""
    job_id = "claimed-job"
    value = SlotValue(job_id=job_id, phase="held")
    # Room for the lease's write only: the run record's and the reads' are refused.
    room = len(msgspec.json.encode(value))
    async with runner_parts(own_nats, "claimwrites", pending_size=room) as parts:
        claimer = slot_claimer(parts.slots, parts.journal)
        request = events.JobRequested(job_id=job_id, job_type="t", occurred_at=datetime.now(UTC))
        job = RunningJob(job_id, cast("Any", None))
        await stopped_under(parts.nc, own_nats)
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await claimer._claim_at_once(request, job, slot_key(None, job_id), value)
        assert parts.nc.pending_data_size > 0, "no lease write held"
        assert running(_CLAIM_WRITES) == []
