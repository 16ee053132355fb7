"""A flood's large line messages travel on the runner's bulk connection, a job's small ones on
its main connection, and a job's lines stay in order across the two (no noisy neighbour)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.services.runner.bulk import BulkLane
from jobrunner.services.runner.publisher import BULK_BYTES, LinePublisher

JOB = "bulkjob"


@pytest.fixture
async def connections(settings: Settings) -> AsyncIterator[tuple[NATS, NATS]]:
    nc = await eventstore.connect(settings, "test-main")
    bulk = await eventstore.connect(settings, "test-bulk")
    await eventstore.ensure_topology(nc.jetstream(), Names(settings.prefix), settings)
    yield nc, bulk
    await eventstore.close(bulk)
    await eventstore.close(nc)


async def test_a_flood_goes_on_the_bulk_connection_and_a_line_on_the_main_one(
    connections: tuple[NATS, NATS], settings: Settings
) -> None:
    """A lone line, two full messages of a flood, a lone line again: the flood's messages on the
    bulk connection, the lone lines on the main one, every line in order."""
    nc, bulk = connections
    names = Names(settings.prefix)
    texts: list[str] = []
    arrived = asyncio.Event()

    async def keep(msg: Msg) -> None:
        event = codec.decode(msg.data)
        assert isinstance(event, events.LineLogged)
        texts.extend(line.text for line in event.lines)
        arrived.set()

    async def stored(count: int) -> None:
        async with asyncio.timeout(10):
            while len(texts) < count:
                arrived.clear()
                await arrived.wait()

    await nc.subscribe(names.job_kind_subject(JOB, "lines"), cb=keep)
    await nc.flush()
    main_before, bulk_before = nc.stats["out_msgs"], bulk.stats["out_msgs"]
    publisher = LinePublisher(nc, names, JOB, batch_max=1000, bulk=BulkLane(bulk, 5.0))
    publisher.start()
    # 1,000 lines of 100 characters: a message well over BULK_BYTES each.
    flood = [f"flood {i:05d} ".ljust(100, "x") for i in range(2000)]
    assert BULK_BYTES < 1000 * 100
    publisher.add("stdout", "INFO", "first", datetime.now(UTC))
    await stored(1)
    publisher.add_lines("stdout", ["INFO"] * len(flood), flood, datetime.now(UTC), "\n".join(flood))
    await stored(1 + len(flood))
    publisher.add("stdout", "INFO", "last", datetime.now(UTC))
    await asyncio.wait_for(publisher.close(), 10)
    await stored(2 + len(flood))
    assert texts == ["first", *flood, "last"]
    assert bulk.stats["out_msgs"] - bulk_before == 2
    assert nc.stats["out_msgs"] - main_before == 2


async def test_a_flood_goes_on_the_main_connection_while_the_bulk_one_is_away(
    connections: tuple[NATS, NATS], settings: Settings
) -> None:
    """The bulk connection is a fast path only: closed, the flood's messages take the main one,
    every line stored in order."""
    nc, bulk = connections
    names = Names(settings.prefix)
    texts: list[str] = []
    done = asyncio.Event()
    flood = [f"flood {i:05d} ".ljust(100, "x") for i in range(2000)]

    async def keep(msg: Msg) -> None:
        event = codec.decode(msg.data)
        assert isinstance(event, events.LineLogged)
        texts.extend(line.text for line in event.lines)
        if len(texts) >= len(flood):
            done.set()

    await nc.subscribe(names.job_kind_subject(JOB, "lines"), cb=keep)
    await nc.flush()
    lane = BulkLane(bulk, 5.0)
    await bulk.close()
    publisher = LinePublisher(nc, names, JOB, batch_max=1000, bulk=lane)
    publisher.start()
    publisher.add_lines("stdout", ["INFO"] * len(flood), flood, datetime.now(UTC), "\n".join(flood))
    await asyncio.wait_for(publisher.close(), 10)
    await asyncio.wait_for(done.wait(), 10)
    assert texts == flood
    await lane.close()
