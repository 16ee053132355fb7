"""A lost job's two reads (its last status and its cancel, read at once): when one fails, the
other is not left running after the sweeper has given up on the job (``together.both``)."""

from __future__ import annotations

from pathlib import Path

import nats.errors
import pytest

from jobrunner.common.slots import SlotValue
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner import orphans
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.running import RunnerIdentity
from jobrunner.services.runner.sweep import LostJobSweeper
from tests.tools.runner_parts import one_read, runner_parts, running, stopped_under

_READS = {JobJournal.last_status.__qualname__, JobJournal.cancel_of.__qualname__}


async def test_a_failed_read_of_a_lost_job_leaves_no_other_read_running(
    own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """NATS away, nats-py's buffer for the next connection holding exactly one read: the status
    read is held for the new connection, the cancel read is refused at once
    (``OutboundBufferLimitError``). The sweep of the expired lease fails with that error, and the
    held read is withdrawn with it (it was left waiting for NATS to come back)."""
    job_id = "lost-job"
    room = one_read(Names("lostreads"), job_id)
    async with runner_parts(own_nats, "lostreads", pending_size=room, name="sweeper") as parts:
        assert await parts.journal.last_status(job_id) is None  # the ack inbox subscribed
        sweeper = LostJobSweeper(
            parts.slots,
            LockBoard(),
            parts.journal,
            RunnerIdentity.of_this_process(),
            orphans.ToolLedger(tmp_path / "runner-tools"),
            set(),
            QueueOrphans(parts.slots, parts.journal, 60.0),
        )
        await stopped_under(parts.nc, own_nats)
        assert parts.nc.pending_data_size == 0  # room for the first read only
        expired = SlotValue(job_id=job_id, phase="held", runner_id="gone", host="elsewhere")
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await sweeper.on_lease_expired(expired)
        assert running(_READS) == []
