"""A lost job's two reads (its last status and its cancel, read at once): when one fails, the
other is not left running after the sweeper has given up on the job (``together.both``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import nats.errors
import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable, SlotValue
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner import orphans
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.queue_orphans import QueueOrphans
from jobrunner.services.runner.running import RunnerIdentity
from jobrunner.services.runner.sweep import LostJobSweeper

_READS = {JobJournal.last_status.__qualname__, JobJournal.cancel_of.__qualname__}


def _reads_running() -> list[asyncio.Task[object]]:
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") in _READS
    ]


async def test_a_failed_read_of_a_lost_job_leaves_no_other_read_running(
    own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """NATS away, nats-py's buffer for the next connection holding exactly one read: the status
    read is held for the new connection, the cancel read is refused at once
    (``OutboundBufferLimitError``). The sweep of the expired lease fails with that error, and the
    held read is withdrawn with it (it was left waiting for NATS to come back)."""
    settings = Settings(nats_url=own_nats.url, prefix="lostreads")
    names = Names(settings.prefix)
    job_id = "lost-job"
    # The message-get request each read sends (the two differ only in the kind, of one length).
    read = msgspec.json.encode({"last_by_subj": names.job_kind_subject(job_id, "status")})
    nc = await eventstore.connect(settings, "sweeper", pending_size=len(read))
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, settings)
        journal = JobJournal(nc, js, names, "runner-test")
        assert await journal.last_status(job_id) is None  # the ack inbox subscribed
        slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
        sweeper = LostJobSweeper(
            slots,
            LockBoard(),
            journal,
            RunnerIdentity.of_this_process(),
            orphans.ToolLedger(tmp_path / "runner-tools"),
            set(),
            QueueOrphans(slots, journal, 60.0),
        )
        own_nats.stop()
        async with asyncio.timeout(10):
            while nc.is_connected:  # noqa: ASYNC110  # nats-py's state: no event to wait on
                await asyncio.sleep(0.01)
        assert nc.pending_data_size == 0  # room for the first read only
        expired = SlotValue(job_id=job_id, phase="held", runner_id="gone", host="elsewhere")
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await sweeper.on_lease_expired(expired)
        assert _reads_running() == []
    finally:
        await eventstore.close(nc)
