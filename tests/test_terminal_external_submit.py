"""`jobrunner submit` of an external job type: the callback address and token, which the server
shows only once, reach the user, and a worker can report with them (real servers)."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.external_support import EXTERNAL_TYPES
from tests.system import System
from tests.tools.terminal_client import jobrunner


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES, auth=True)


async def test_submit_prints_the_external_jobs_callback_address_and_token(system: System) -> None:
    """Stdout holds the job id, its callback URL and its token, one a line, and the worker's
    report with them is taken (before: the id alone; the token was lost, the job could only
    time out)."""
    run = await jobrunner(system, "submit", "document", "-p", "file=a.pdf")
    assert run.code == 0, run.err
    job_id, url, token = run.out.split()
    assert url == f"{system.base_url}/api/external/jobs/{job_id}"
    async with httpx.AsyncClient(timeout=30) as worker:
        report = await worker.post(url, json={}, headers={"Authorization": f"Bearer {token}"})
    assert report.status_code in (200, 409), report.text
    assert report.json().get("error", {}).get("code", "JOB_WAITING") == "JOB_WAITING"


async def test_submit_follow_tells_the_callback_on_stderr(system: System) -> None:
    """With --follow the log is stdout's: the callback address and token go to stderr first."""
    # "quiet" ends PROCESSING_TIMEOUT 2 s after a runner holds it, with no worker reporting.
    run = await jobrunner(system, "submit", "quiet", "--follow")
    told = dict(line.split(" ", 1) for line in run.err.splitlines() if line.startswith("callback"))
    url, token = told["callback_url"], told["callback_token"].removesuffix(" (shown once)")
    assert "callback" not in run.out
    # The job ended: a worker with the right token is told so (a wrong one would be 401).
    async with httpx.AsyncClient(timeout=30) as worker:
        report = await worker.post(url, json={}, headers={"Authorization": f"Bearer {token}"})
    assert report.status_code == 409, report.text
    assert report.json()["error"]["code"] == "JOB_FINISHED"
