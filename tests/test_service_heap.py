"""The runner's and the projector's collector: their youngest pass runs after as many objects
as the API's."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import msgspec
import pytest

from jobrunner.common import heap
from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, start_job, wait_status


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


@pytest.fixture
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


async def test_a_started_runner_collects_young_objects_less_often(
    system: System, default_thresholds: None
) -> None:
    """A runner, started in a process with CPython's thresholds, raises the youngest one once
    it serves jobs: 100 jobs' reads and messages made 2-3 passes a second that freed nothing."""
    await system.stop_service("runner")
    gc.set_threshold(700, 10, 10)  # the test process's API raised it already
    await system.start_runner()
    async with system.client() as client:
        job_id = await start_job(client, "emit", lines=1)
        await wait_status(client, job_id, "completed")
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD


async def test_a_started_projector_collects_young_objects_less_often(
    system: System, default_thresholds: None
) -> None:
    """A projector, started in a process with CPython's thresholds, raises the youngest one once
    it applies events: a flood's rows made a pass every 350 lines (bench/RESULTS.md, session 39)."""
    await system.stop_service("projector")
    gc.set_threshold(700, 10, 10)  # the test process's API raised it already
    await system.start_projector()
    async with system.client() as client:
        job_id = await start_job(client, "emit", lines=1)
        await wait_status(client, job_id, "completed")
    assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
