"""An external job whose runner is stopped gracefully (SIGTERM, Ctrl-C) while its worker works."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.system import System
from tests.tools.runner_holds import wait_slot_held
from tests.tools.runners import wait_status


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES)


async def test_runners_stop_fails_the_external_job_runner_stopped_and_the_worker_is_told(
    system: System,
) -> None:
    """Failed RUNNER_STOPPED, not cancelled; the worker's next report: 409 JOB_FINISHED naming
    the status and the code."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await job.report_when_held(worker, lines=[{"text": "working"}])
        await wait_status(client, job.id, "running")
        await system.stop_service("runner")
        done = await wait_status(client, job.id, "cancelled", "failed", "completed")
        next_report = await job.report(worker, progress=50)
    assert done["status"] == "failed", done
    assert done["cancelled_by"] is None
    assert done["error"]["code"] == "RUNNER_STOPPED"
    assert next_report.status_code == 409
    assert next_report.json()["error"]["code"] == "JOB_FINISHED"
    assert next_report.json()["error"]["status"] == "failed"
    assert next_report.json()["error"]["error_code"] == "RUNNER_STOPPED"


async def test_runners_stop_before_the_first_report_fails_the_held_job_runner_stopped(
    system: System,
) -> None:
    """An external job its runner holds, its worker not yet reported: failed RUNNER_STOPPED too,
    and the worker's first report is told so."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client)
        await wait_slot_held(system.settings, job.id)
        await system.stop_service("runner")
        done = await wait_status(client, job.id, "cancelled", "failed", "completed")
        first_report = await job.report(worker, progress=1)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "RUNNER_STOPPED"
    assert first_report.status_code == 409
    assert first_report.json()["error"]["error_code"] == "RUNNER_STOPPED"
