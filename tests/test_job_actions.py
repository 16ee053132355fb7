"""Acting on one job: restart (a new attempt), archive and unarchive, on real servers."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.batch_actions_support import ReadModel, submit_through
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, start_job, wait_file, wait_status


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=6.0)


async def test_restart_of_an_ended_job_is_a_new_attempt_that_runs(system: System) -> None:
    """Restarting a failed job answers 201 with attempt 2, linked to the first, and it runs."""
    async with system.client() as client:
        first = await start_job(client, "emit", lines=1, exit_code=4)
        await wait_status(client, first, "failed")
        response = await client.post(f"/api/jobs/{first}/restart")
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["attempt"], body["attempt_of"], body["restarted"]) == (2, first, first)
        assert body["status"] == "pending"
        again = await wait_status(client, body["id"], "failed")
    assert again["job_type"] == "emit"
    assert again["parameters"]["exit_code"] == 4


async def test_restart_of_an_older_attempt_runs_the_latest_one_again(system: System) -> None:
    """Naming the first attempt after a second one ended gives attempt 3, not a second 2."""
    async with system.client() as client:
        first = await start_job(client, "emit", lines=1)
        await wait_status(client, first, "completed")
        second = (await client.post(f"/api/jobs/{first}/restart")).json()["id"]
        await wait_status(client, second, "completed")
        response = await client.post(f"/api/jobs/{first}/restart")
    assert response.status_code == 201, response.text
    assert (response.json()["attempt"], response.json()["restarted"]) == (3, second)


async def test_restart_of_a_running_job_is_409_job_active(system: System, tmp_path: Path) -> None:
    """A job still running cannot be restarted: 409 JOB_ACTIVE names its status."""
    pidfile = tmp_path / "pids"
    async with system.client() as client:
        job_id = await start_job(client, "family", pidfile=str(pidfile))
        await wait_file(pidfile)
        response = await client.post(f"/api/jobs/{job_id}/restart")
        await client.delete(f"/api/jobs/{job_id}")
    assert response.status_code == 409
    error = response.json()["error"]
    assert (error["code"], error["status"], error["latest"]) == ("JOB_ACTIVE", "running", job_id)


async def test_restart_on_a_busy_reject_lock_is_409_slot_busy(
    system: System, tmp_path: Path
) -> None:
    """A reject-type job restarted while its lock is held answers 409 SLOT_BUSY, as POST does."""
    async with system.client() as client:
        first = await start_job(client, "rejecting", lines=1)
        await wait_status(client, first, "completed")
        holder = await start_job(client, "rejecting", lines=40)
        await wait_status(client, holder, "running")
        response = await client.post(f"/api/jobs/{first}/restart")
        await client.delete(f"/api/jobs/{holder}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "SLOT_BUSY"
    assert response.json()["error"]["running_job"]["id"] == holder


async def test_archive_and_unarchive_a_job(settings: Settings, system: System) -> None:
    """An archived job leaves the default job list (archived=true finds it); unarchived it is
    back."""
    async with system.client() as client, ReadModel(settings) as rm:
        job_id = await start_job(client, "emit", lines=1)
        await wait_status(client, job_id, "completed")
        response = await client.post(f"/api/jobs/{job_id}/archive")
        assert response.status_code == 202, response.text
        assert response.json() == {"id": job_id, "archived": True}
        assert (await rm.job(job_id))["archived"] is True
        assert job_id not in await _listed(client)
        assert job_id in await _listed(client, archived="true")
        assert (await client.post(f"/api/jobs/{job_id}/unarchive")).status_code == 202
        assert (await rm.job(job_id))["archived"] is False
        assert job_id in await _listed(client)


async def _listed(client: httpx.AsyncClient, **query: str) -> list[str]:
    response = await client.get("/api/jobs", params=query)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["items"]]


async def test_own_jobs_token_cannot_restart_another_callers_job(system: System) -> None:
    """A token limited to its own jobs gets 404 JOB_NOT_FOUND for others' jobs."""
    alice = await system.create_token("alice", "operator", own_jobs_only=True)
    async with system.client() as admin:
        job_id = await start_job(admin, "emit", lines=1)
        await wait_status(admin, job_id, "completed")
    async with system.client(token=alice) as client:
        for action in ("restart", "archive", "unarchive"):
            response = await client.post(f"/api/jobs/{job_id}/{action}")
            assert response.status_code == 404, (action, response.text)
            assert response.json()["error"]["code"] == "JOB_NOT_FOUND"


async def test_restart_of_a_batch_job_stays_in_its_batch(
    settings: Settings, system: System
) -> None:
    """A batch job restarted alone keeps its batch and place; the batch counts the new attempt."""
    batch_id, (job_id,) = await submit_through(
        system.client, [("emit", {"lines": 1, "exit_code": 1})]
    )
    async with ReadModel(settings) as rm, system.client() as client:
        await rm.wait_ended(batch_id, 1)
        response = await client.post(f"/api/jobs/{job_id}/restart")
        assert response.status_code == 201, response.text
        assert response.json()["batch_id"] == batch_id
        new_id = response.json()["id"]
        batch, (latest,) = await rm.wait_batch(
            batch_id, lambda b, js: js[0]["id"] == new_id and js[0]["status"] == "failed"
        )
    assert (latest["batch_index"], latest["attempt"]) == (0, 2)
    assert batch["failed_jobs"] == 1


@pytest.mark.parametrize(
    "bad_id",
    ["%00", "a%00b", "x" * 5000, "%F0%9F%98%80", "..%2F..", "%E2%90%80", "%ED%A0%80", "%FF"],
)
async def test_hostile_ids_in_action_paths_are_404(system: System, bad_id: str) -> None:
    """Any id in an action's path (NUL, very long, emoji, dots) answers 404, never a 500."""
    async with system.client() as client:
        for path in (f"/api/jobs/{bad_id}/restart", f"/api/batches/{bad_id}/fail"):
            response = await client.post(path)
            assert response.status_code == 404, (path[:60], response.text[:300])
            assert response.json()["error"]["code"] in (
                "JOB_NOT_FOUND",
                "BATCH_NOT_FOUND",
                "NOT_FOUND",
            )
