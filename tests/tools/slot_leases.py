"""The slot table as a test drives it directly: a connection of its own with the prefix's
buckets made, and the lease value a runner process writes for a job it holds."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable, SlotValue
from jobrunner.contracts.names import Names
from jobrunner.services.runner.running import RunnerIdentity


@contextlib.asynccontextmanager
async def slot_table(settings: Settings) -> AsyncIterator[SlotTable]:
    nc = await eventstore.connect(settings, "test-lease")
    try:
        names = Names(settings.prefix)
        await eventstore.ensure_topology(nc.jetstream(), names, settings)
        yield SlotTable(nc.jetstream(), names, settings.lease_ttl_seconds)
    finally:
        await eventstore.close(nc)


def held(job_id: str, runner_id: str = "me") -> SlotValue:
    """The lease this test process would write as runner ``runner_id`` holding ``job_id``."""
    return RunnerIdentity.of_this_process(runner_id).held_value(job_id, "emit")
