"""The runners' periodic sweep drops a queue entry whose job was never stored, once it is older
than ``queue_orphan_seconds``, with no job of its lock waiting (RESULTS s25posted: the API keeps
the entry when a publish's ack is lost, and before this only a waiting job's runner dropped it,
so it stayed on the lock board and in ``jobrunner_jobs_queued``). An entry as old whose request
is in the stream, and a younger one, stay."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import QueueEntry, SlotTable, queue_key
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.runner import orphans
from jobrunner.services.runner.board import LockBoard
from jobrunner.services.runner.journal import JobJournal
from jobrunner.services.runner.running import RunnerIdentity
from jobrunner.services.runner.sweep import LostJobSweeper

LOCK = "billing"
MARGIN = 2.0  # seconds either side of the orphan age, for the clocks of the test's steps


async def test_the_sweep_drops_an_old_entry_whose_job_was_never_stored(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    names = Names(settings.prefix)
    slots = SlotTable(js, names, ttl_seconds=settings.lease_ttl_seconds)
    kv = await slots.kv()
    now = time.time()
    age = settings.queue_orphan_seconds
    entries = {
        "never-stored": now - age - MARGIN,  # past the age, not in the stream: dropped
        "stored": now - age - MARGIN,  # past the age, its request stored: stays
        "young": now - age + 10 * MARGIN,  # not in the stream, younger than the age: stays
    }
    for job_id, queued_at in entries.items():
        entry = QueueEntry(job_id=job_id, job_type="t", queued_at=queued_at)
        await kv.put(queue_key(LOCK, job_id), msgspec.json.encode(entry))
    await eventstore.publish(
        js, names, events.JobRequested(job_id="stored", job_type="t", lock=LOCK)
    )
    board, stop = LockBoard(), asyncio.Event()

    async def nothing(value: object) -> None:
        pass

    watching = asyncio.create_task(board.watch(kv, stop, nothing))
    try:
        await asyncio.wait_for(board.ready.wait(), 10)
        sweeper = LostJobSweeper(
            slots,
            board,
            JobJournal(js._nc, js, names, "runner-test"),
            RunnerIdentity.of_this_process(),
            orphans.ToolLedger(tmp_path / "runner-tools"),
            set(),
            age,
        )
        await sweeper.sweep()
        await sweeper.sweep()  # a second round: still the same two
        left = set()
        for job_id in entries:
            try:
                value = (await kv.get(queue_key(LOCK, job_id))).value
            except KeyNotFoundError:
                continue
            if value:
                left.add(job_id)
        assert left == {"stored", "young"}
    finally:
        stop.set()
        await asyncio.wait({watching}, timeout=10)
