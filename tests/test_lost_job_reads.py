"""A lost job's two reads (its last status and its cancel, read at once): when one fails, the
other is not left running after the sweeper has given up on the job (``together.both``)."""

from __future__ import annotations

from pathlib import Path

import nats.errors
import pytest

from jobrunner.common.slots import SlotValue
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.journal import JobJournal
from tests.tools.runner_parts import (
    lost_job_sweeper,
    one_read,
    runner_parts,
    running,
    stopped_under,
)

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
        sweeper = lost_job_sweeper(parts.slots, parts.journal, tmp_path / "runner-tools")
        await stopped_under(parts.nc, own_nats)
        assert parts.nc.pending_data_size == 0  # room for the first read only
        expired = SlotValue(job_id=job_id, phase="held", runner_id="gone", host="elsewhere")
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await sweeper.on_lease_expired(expired)
        assert running(_READS) == []
