"""The runner's lock board: its watch of the lock bucket ends when the runner stops."""

from __future__ import annotations

import asyncio

import msgspec
import nats

from jobrunner.common.settings import Settings
from jobrunner.common.slots import QueueEntry, RunRecord, SlotValue, queue_key, run_key
from jobrunner.contracts.names import Names
from jobrunner.services.runner.board import LockBoard, open_watch


async def _nothing(_: SlotValue) -> None:
    pass


async def test_the_watch_ends_on_stop_after_its_connection_closed(settings: Settings) -> None:
    """Closed first (a shutdown closing the connection), the watch still ends on ``stop``: the
    watcher's own stop fails with the connection gone and must not leave the iteration waiting."""
    nc = await nats.connect(settings.nats_url)
    try:
        kv = await nc.jetstream().create_key_value(bucket=Names(settings.prefix).locks_bucket)
        value = SlotValue(job_id="j1", phase="held", job_type="t")
        await kv.put("slot.a", msgspec.json.encode(value))
        board, stop = LockBoard(), asyncio.Event()
        watching = asyncio.create_task(board.watch(kv, stop, _nothing))
        await board.ready.wait()  # the bucket's state replayed
        assert "slot.a" in board.slots
    finally:
        await nc.close()
    stop.set()
    # A guard against a hang only: the watch ends at once. Not ``wait_for``, whose cancel at the
    # timeout the old watch took for a failure and ended on.
    done, _ = await asyncio.wait({watching}, timeout=30)
    try:
        assert watching in done, "the watch did not end on stop"
        assert watching.exception() is None
    finally:
        watching.cancel()


async def test_an_entry_that_does_not_decode_is_skipped_and_the_watch_follows_on(
    settings: Settings,
) -> None:
    """A value jobrunner did not write (a hand-made put) under a watched key: the board skips it
    and keeps following the bucket. It used to fail the watch, which restarted, replayed the
    bucket, met the same entry and failed again, every second and a half for as long as the
    entry stayed."""
    nc = await nats.connect(settings.nats_url)
    board, stop = LockBoard(), asyncio.Event()
    try:
        kv = await nc.jetstream().create_key_value(bucket=Names(settings.prefix).locks_bucket)
        await kv.put("slot.hand-made", b"{}")
        await kv.put("queue.sheet.hand-made", b"not json")
        watching = asyncio.create_task(board.watch(kv, stop, _nothing))
        await asyncio.wait_for(board.ready.wait(), 30)
        value = SlotValue(job_id="j1", phase="held", job_type="t")
        await kv.put("slot.after", msgspec.json.encode(value))
        async with asyncio.timeout(30):
            while "slot.after" not in board.slots:  # noqa: ASYNC110 - the board's state, polled
                await asyncio.sleep(0.01)
        assert board.slots["slot.after"] == value
        assert "slot.hand-made" not in board.slots
        assert not watching.done(), "the watch failed"
    finally:
        stop.set()
        await nc.close()
    await asyncio.wait({watching}, timeout=30)
    watching.cancel()


async def test_a_queue_key_without_a_job_does_not_stop_the_board(settings: Settings) -> None:
    """A hand-made ``queue.res`` put and deleted in the lock bucket: the board skips it and keeps
    following the bucket, and the well-formed queue of that lock still names its head. Its
    delete used to fail the watch (an IndexError), and every replay after it, for good."""
    nc = await nats.connect(settings.nats_url)
    board, stop = LockBoard(), asyncio.Event()
    try:
        kv = await nc.jetstream().create_key_value(bucket=Names(settings.prefix).locks_bucket)
        await kv.put(queue_key("res", "j1"), msgspec.json.encode(QueueEntry(job_id="j1")))
        await kv.put("queue.res", msgspec.json.encode(QueueEntry(job_id="j2")))
        await kv.delete("queue.res")
        await kv.put("unknown.res", b"\xff")
        watching = asyncio.create_task(board.watch(kv, stop, _nothing))
        value = SlotValue(job_id="j0", phase="held", job_type="t")
        await kv.put("slot.res", msgspec.json.encode(value))
        async with asyncio.timeout(30):
            while "slot.res" not in board.slots:  # noqa: ASYNC110 - the board's state, polled
                await asyncio.sleep(0.01)
        assert board.slots["slot.res"] == value
        head = board.head("slot.res")
        assert head is not None
        assert head.job_id == "j1"
        assert not watching.done(), "the watch failed"
    finally:
        stop.set()
        await nc.close()
    await asyncio.wait({watching}, timeout=30)
    watching.cancel()


async def test_the_board_is_handed_no_running_jobs_record(settings: Settings) -> None:
    """Run records (``run.``, five messages a job with their markers) stay at the server: the
    board's watch is handed the leases and queue places only. Every runner's watch used to be
    handed each of them, and drop it."""
    nc = await nats.connect(settings.nats_url)
    board, stop = LockBoard(), asyncio.Event()
    try:
        kv = await nc.jetstream().create_key_value(bucket=Names(settings.prefix).locks_bucket)
        await kv.put(run_key("j0"), msgspec.json.encode(RunRecord(job_id="j0", slot_key="job.j0")))
        first = await open_watch(kv)
        watching = asyncio.create_task(board.watch(kv, stop, _nothing, first))
        await asyncio.wait_for(board.ready.wait(), 30)
        for n in range(1, 4):
            record = RunRecord(job_id=f"j{n}", slot_key=f"job.j{n}")
            await kv.put(run_key(record.job_id), msgspec.json.encode(record))
            await kv.delete(run_key(record.job_id))
        value = SlotValue(job_id="j4", phase="held", job_type="t")
        await kv.put("job.j4", msgspec.json.encode(value))
        async with asyncio.timeout(30):
            while "job.j4" not in board.slots:  # noqa: ASYNC110 - the board's state, polled
                await asyncio.sleep(0.01)
        assert first._sub is not None
        info = await first._sub.consumer_info()
        assert info.delivered.consumer_seq == 1, "handed more than the lease"
    finally:
        stop.set()
        await nc.close()
    await asyncio.wait({watching}, timeout=30)
    watching.cancel()
