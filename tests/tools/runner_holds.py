"""Waits on what runners hold that nothing signals: requests delivered and not yet acknowledged,
and a job's slot. Each is the server's answer, asked again until it says so (bounded)."""

from __future__ import annotations

import asyncio

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.tools.slot_leases import slot_table


async def wait_requests_held(settings: Settings, count: int) -> None:
    """Until the runners hold ``count`` requests delivered and not yet acknowledged (a job
    waiting for its slot, capacity or batch's seal; a started job's request is acknowledged)."""
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "tests")
    try:
        js = nc.jetstream()
        async with asyncio.timeout(30):
            consumer = names.stream, names.runner_consumer
            while (await js.consumer_info(*consumer)).num_ack_pending != count:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # nothing to wait on but the server's count
    finally:
        await eventstore.close(nc)


async def wait_slot_held(settings: Settings, job_id: str) -> None:
    """Until a runner holds ``job_id``'s slot (what the API asks before it takes an external
    job's report: 409 JOB_WAITING until then)."""
    async with slot_table(settings) as slots, asyncio.timeout(30):
        while await slots.holder(job_id) is None:  # noqa: ASYNC110 - nothing to wait on
            await asyncio.sleep(0.05)
