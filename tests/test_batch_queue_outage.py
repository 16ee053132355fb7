"""A batch's lock queue entries written through a NATS server that stops answering, for pauses
just shorter and just longer than the time ``enqueue_many`` waits for their confirmation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.board import LockBoard
from tests.freeze import freeze, thaw

# The wait under test, short so the test is fast; ENQUEUE_ACK_SECONDS is the same mechanism.
WAIT = 2.0
JOBS = [(f"job{i:03d}", "locked") for i in range(200)]


@pytest.fixture
async def table(own_nats: EmbeddedNats) -> AsyncIterator[tuple[SlotTable, JetStreamContext]]:
    settings = Settings(nats_url=own_nats.url, prefix="queueoutage")
    nc = await eventstore.connect(settings, "test")
    js = nc.jetstream()
    names = Names(settings.prefix)
    await eventstore.ensure_topology(js, names, settings)
    try:
        yield SlotTable(js, names, 3.0), js
    finally:
        await eventstore.close(nc)


async def enqueue_through_pause(
    server: EmbeddedNats, slots: SlotTable, pause: float
) -> BaseException | None:
    assert server.proc is not None
    freeze(server.proc.pid)
    writing = asyncio.create_task(slots.enqueue_many("sheet", JOBS, timeout=WAIT))
    try:
        await asyncio.sleep(pause)  # the fault itself lasts this long
    finally:
        thaw(server.proc.pid)
    try:
        await writing
    except TimeoutError as exc:
        return exc
    return None


async def queue_order(slots: SlotTable) -> list[str]:
    board = LockBoard()
    stop = asyncio.Event()

    async def ignore(_: object) -> None:
        return None

    watching = asyncio.create_task(board.watch(await slots.kv(), stop, ignore))
    try:
        async with asyncio.timeout(10):
            await board.ready.wait()
        queue = board.queues.get("slot.sheet", {})
        return [job_id for job_id, _ in sorted(queue.items(), key=lambda item: item[1][0])]
    finally:
        stop.set()
        await asyncio.wait_for(watching, 10)


async def test_a_pause_shorter_than_the_wait_queues_the_batch_in_order(
    own_nats: EmbeddedNats, table: tuple[SlotTable, JetStreamContext]
) -> None:
    """NATS silent a little less than the wait: every entry is confirmed, in batch order."""
    slots, _ = table
    assert await enqueue_through_pause(own_nats, slots, WAIT - 1.0) is None
    assert await queue_order(slots) == [job_id for job_id, _ in JOBS]


async def test_a_pause_longer_than_the_wait_gives_up_and_a_retry_queues_in_order(
    own_nats: EmbeddedNats, table: tuple[SlotTable, JetStreamContext]
) -> None:
    """NATS silent longer than the wait: the writer gives up (the batch POST answers 503);
    writing the batch's entries again leaves them in batch order."""
    slots, _ = table
    assert isinstance(await enqueue_through_pause(own_nats, slots, WAIT + 1.0), TimeoutError)
    await slots.enqueue_many("sheet", JOBS, timeout=WAIT)
    assert await queue_order(slots) == [job_id for job_id, _ in JOBS]
