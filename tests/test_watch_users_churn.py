"""The lock bucket's watch users know every key stored all along while others are written at
once: a runner's lock board (leases ``slot.``/``job.``, queue places ``queue.``, with run
records and fences written meanwhile) and the list of running jobs (``run.``, whose removed
records leave purge markers gone after a second). Real nats-server; the watch's ``None`` comes
once every key stored at its start has come (``keywatch``)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
from nats.js.kv import KeyValue

from jobrunner.common.settings import Settings
from jobrunner.common.slots import QueueEntry, RunRecord, SlotTable, fence_key, queue_key
from tests.tools.lock_board import watching_board
from tests.tools.slot_leases import held, slot_table

pytestmark = pytest.mark.timeout(180)

LEASES = [f"slot.l{n:02d}" for n in range(15)] + [f"job.j{n:02d}" for n in range(15)]
QUEUED = [(f"q{n:02d}", f"w{n:02d}") for n in range(15)]  # (lock, job)
RUNNING = [f"r{n:02d}" for n in range(20)]
# Each writer's rounds at most: a fixed amount of work, whatever the machine's speed.
CHURN_ROUNDS = 300


async def store_stable(kv: KeyValue, table: SlotTable) -> None:
    for key in LEASES:
        await kv.put(key, msgspec.json.encode(held(key.partition(".")[2])))
    for lock, job in QUEUED:
        await kv.put(queue_key(lock, job), msgspec.json.encode(QueueEntry(job_id=job)))
    for job in RUNNING:
        await table.record_run(RunRecord(job_id=job, slot_key=f"job.{job}"))


async def churn(kv: KeyValue, table: SlotTable, stop: asyncio.Event, seed: int) -> None:
    """What runners do meanwhile: renew the leases held (a new revision each), start and end
    other jobs (run records written, then purged), write their fences."""
    rng = random.Random(seed)
    for n in range(CHURN_ROUNDS):
        if stop.is_set():
            return
        key = rng.choice(LEASES)
        await kv.put(key, msgspec.json.encode(held(key.partition(".")[2])))
        lock, job = rng.choice(QUEUED)
        await kv.put(queue_key(lock, job), msgspec.json.encode(QueueEntry(job_id=job)))
        await table.record_run(RunRecord(job_id=rng.choice(RUNNING), slot_key="job.x"))
        other = f"o{seed}x{n}"
        await table.record_run(RunRecord(job_id=other, slot_key=f"job.{other}"))
        await kv.put(fence_key(f"runner{seed}"), b"")
        await table.forget_run(other)


@asynccontextmanager
async def churning(kv: KeyValue, table: SlotTable) -> AsyncIterator[None]:
    """The stable leases, places and running jobs stored, then two writers churning the bucket
    while the body runs."""
    await store_stable(kv, table)
    stop = asyncio.Event()
    writers = [asyncio.create_task(churn(kv, table, stop, seed)) for seed in range(2)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*writers)


async def test_a_lock_board_made_while_leases_are_renewed_knows_every_lease_and_place(
    settings: Settings,
) -> None:
    """Each new board, once ready, knows every lease and queue place stored all along."""
    async with slot_table(settings) as table:
        kv = await table.kv()
        missing: list[list[str]] = []
        async with churning(kv, table):
            for _ in range(8):
                async with asyncio.timeout(30), watching_board(kv) as (board, _stop):
                    missed = [key for key in LEASES if key not in board.slots]
                    missed += [
                        f"{lock}/{job}"
                        for lock, job in QUEUED
                        if not board.queued("slot." + lock, job)
                    ]
                    missing.append(missed)
        assert [missed for missed in missing if missed] == []


async def test_the_running_jobs_list_read_while_jobs_start_and_end_has_every_running_job(
    settings: Settings,
) -> None:
    """Each listing of the running jobs' records has every job running all along, while other
    jobs start and end (their records purged) and the running ones' records are rewritten."""
    async with slot_table(settings) as table:
        kv = await table.kv()
        missing: list[list[str]] = []
        async with churning(kv, table):
            for _ in range(20):
                async with asyncio.timeout(30):
                    listed = {record.job_id for record in await table.run_records()}
                missing.append(sorted(set(RUNNING) - listed))
        assert [missed for missed in missing if missed] == []
