"""A replaced content's delayed purge does not outlive the API that scheduled it (found by
review: ``_purge_when_unread`` caught every error of the consumer listing and asked again after
each grace, for ever, once its connection was closed: a leaked task per replaced object)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from jobrunner.common import artifactstore, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.system import System

IDLE = 1.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=EXTERNAL_TYPES, artifact_read_idle_seconds=IDLE
    )


async def test_the_delayed_purge_ends_when_the_api_stops(settings: Settings) -> None:
    """The API stopped within the grace: its waiting purge is cancelled and awaited at the
    shutdown (what it leaves, the next upload of the name purges)."""
    system = System(settings)
    before = set(artifactstore._REPLACED_PURGES.values())
    try:
        await system.start()
        async with system.client() as client, worker_client(system.base_url) as worker:
            job = await start_external(client, file="a.pdf")
            await job.report_when_held(worker, progress=10)
            headers: dict[str, Any] = {"Authorization": f"Bearer {job.token}"}
            for data in (b"A" * 1000, b"B" * 1000):
                put = await worker.put(f"{job.path}/artifacts/x.bin", content=data, headers=headers)
                assert put.status_code == 201, put.text
            await job.report(worker, result={})
        waiting = set(artifactstore._REPLACED_PURGES.values()) - before
        assert waiting, "the re-upload scheduled no purge"
    finally:
        await system.stop()  # within the grace: the purge is still waiting
    left = [task for task in waiting if not task.done()]
    for task in left:  # the test's own clean-up, not the API's
        task.cancel()
    assert not left, f"{len(left)} purge task(s) still running after the API stopped"


async def test_the_delayed_purge_ends_when_its_connection_is_closed(system: System) -> None:
    """A purge whose connection closed under it (not through the API's shutdown) stops at its
    next look for readers instead of asking again after each grace."""
    nc = await eventstore.connect(system.settings, "tests-closed")
    js = nc.jetstream()
    await nc.close()
    artifactstore.purge_when_unread(js, Names(system.settings.prefix), "closednuid", 0.2)
    task = artifactstore._REPLACED_PURGES["closednuid"]
    try:
        await asyncio.wait_for(asyncio.shield(task), 5)
    finally:
        task.cancel()
