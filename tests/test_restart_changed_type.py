"""Running a job again after its job type changed (the types file edited, the API restarted):
the new attempt is held to the type as it is now, not as it was when the job was first
requested, on real servers. The runner keeps the file it started with (it runs a job by the
lock its request names), so what is checked is what the API publishes."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TOOLS
from tests.tools.runners import start_job, wait_status

EMIT = TOOLS / "emit.py"
# Its tool ignores SIGTERM: a cancelled job of it is still running for cancel_grace_seconds.
FAMILY = TOOLS / "family.py"
GRACE_SECONDS = 4


def _types(lock: str, choices: str, extra: str = "", gone: bool = False) -> str:
    going = (
        ""
        if gone
        else f'[job_types.going]\nargv = ["{{python}}", "{EMIT}", "--lines", "1"]\n'
        "timeout_seconds = 60\n"
    )
    return (
        f'[job_types.moving]\nargv = ["{{python}}", "{EMIT}", "--lines", "1"]\n'
        f'timeout_seconds = 60\nlock = "{lock}"\non_busy = "queue"\n'
        f'[job_types.moving.parameters.mode]\ntype = "enum"\nchoices = [{choices}]\ndefault = "a"\n'
        '[job_types.moving.parameters.exit_code]\ntype = "integer"\nflag = "--exit-code"\n'
        "default = 0\n"
        f"{extra}{going}"
        f'[job_types.stubborn]\nargv = ["{{python}}", "{FAMILY}", "--ignore-term"]\n'
        f'timeout_seconds = 120\ncancel_grace_seconds = {GRACE_SECONDS}\nlock = "{lock}"\n'
        'on_busy = "queue"\n'
        '[job_types.stubborn.parameters.pidfile]\ntype = "string"\nflag = "--pidfile"\n'
        "required = true\n"
        '[job_types.stubborn.parameters.starts]\ntype = "string"\nflag = "--count-file"\n'
        "required = true\n"
    )


BEFORE = _types(
    "first",
    '{ value = "a" }, { value = "b" }',
    '[job_types.moving.parameters.note]\ntype = "string"\n',
)
# The operator moved the types to another lock, took the choice "b" and the parameter "note"
# away and added a parameter with a default; "going" is gone.
AFTER = _types(
    "second",
    '{ value = "a" }, { value = "c" }',
    '[job_types.moving.parameters.label]\ntype = "string"\ndefault = "new"\n',
    gone=True,
)


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    before = tmp_path / "before.toml"
    before.write_text(BEFORE)
    return msgspec.structs.replace(settings, job_types_file=str(before))


async def _api_on_changed_types(system: System, tmp_path: Path) -> None:
    after = tmp_path / "after.toml"
    after.write_text(AFTER)
    await system.stop_api()
    system.settings = msgspec.structs.replace(system.settings, job_types_file=str(after))
    await system.start_api()


async def _job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/api/jobs/{job_id}")).json())


def _at(job: dict[str, Any], field: str) -> datetime:
    return datetime.fromisoformat(job[field])


def _stubborn(tmp_path: Path, name: str) -> dict[str, Any]:
    return {
        "job_type": "stubborn",
        "parameters": {"pidfile": str(tmp_path / name), "starts": str(tmp_path / "starts")},
    }


async def test_a_restart_takes_the_lock_and_defaults_the_type_has_now(
    system: System, tmp_path: Path
) -> None:
    """The new attempt gets the new parameter's default, loses the one the type no longer has
    (it could not reach the tool anyway) and queues on the type's new lock: behind a job
    holding that lock (before: it ran beside it, on the type's old lock)."""
    async with system.client() as client:
        first = await start_job(client, "moving", mode="a", note="old")
        await wait_status(client, first, "completed")
        await _api_on_changed_types(system, tmp_path)
        holder = (await client.post("/api/jobs", json=_stubborn(tmp_path, "holder"))).json()["id"]
        await wait_status(client, holder, "running")
        response = await client.post(f"/api/jobs/{first}/restart")
        assert response.status_code == 201, response.text
        again = response.json()["id"]
        assert (await client.delete(f"/api/jobs/{holder}")).status_code == 202
        done = await wait_status(client, again, "completed", "failed", timeout=60)
        holder_ended = await _job(client, holder)
    assert _at(done, "started_at") >= _at(holder_ended, "finished_at")
    assert (done["status"], done["lock"]) == ("completed", "second")
    assert done["parameters"] == {"mode": "a", "exit_code": 0, "label": "new"}


async def test_a_restart_whose_parameters_the_type_now_refuses_is_422(
    system: System, tmp_path: Path
) -> None:
    """A choice the type no longer has is refused as for a new job, naming the field and the
    job, and nothing is published (before: 201, and "b" reached the tool)."""
    async with system.client() as client:
        first = await start_job(client, "moving", mode="b")
        await wait_status(client, first, "completed")
        await _api_on_changed_types(system, tmp_path)
        response = await client.post(f"/api/jobs/{first}/restart")
        job = await _job(client, first)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["job_id"]) == ("INVALID_PARAMETERS", first)
    assert [(f["field"], f["code"]) for f in error["fields"]] == [
        ("parameters.mode", "INVALID_CHOICE")
    ]
    assert job["attempt"] == 1


async def test_a_batch_action_names_every_job_that_cannot_run_again(
    system: System, tmp_path: Path
) -> None:
    """A batch's restart and pending holding jobs of a type since removed or with parameters
    it now refuses are refused 422 listing every such job and why, nothing published (before:
    202, and attempts a runner cannot run or with a removed choice); leaving them out with
    job_ids runs the others again."""
    async with system.client() as client:
        submitted = await client.post(
            "/api/jobs/batch",
            json={
                "batch_name": "changed",
                "jobs": [
                    {"job_type": "moving", "parameters": {"mode": "b", "exit_code": 3}},
                    {"job_type": "going"},
                    {"job_type": "moving", "parameters": {"mode": "a"}},
                ],
            },
        )
        assert submitted.status_code == 201, submitted.text
        batch_id = submitted.json()["batch_id"]
        refused_choice, going, good = submitted.json()["job_ids"]
        await wait_status(client, refused_choice, "failed")
        for job_id in (going, good):
            await wait_status(client, job_id, "completed")
        await _api_on_changed_types(system, tmp_path)
        restart = await client.post(f"/api/batches/{batch_id}/restart")
        pending = await client.post(f"/api/batches/{batch_id}/pending")
        unchanged = (await client.get(f"/api/batches/{batch_id}")).json()
        left_out = await client.post(f"/api/batches/{batch_id}/restart", json={"job_ids": [good]})
        assert left_out.status_code == 202, left_out.text
        [again] = left_out.json()["attempts"]
        done = await wait_status(client, again, "completed", "failed")
    assert restart.status_code == 422, restart.text
    error = restart.json()["error"]
    assert error["code"] == "BATCH_JOBS_CANNOT_RUN_AGAIN"
    assert "job_ids" in error["message"]
    assert error["refused_count"] == 2
    assert [(r["job_id"], r["code"]) for r in error["refused"]] == [
        (refused_choice, "INVALID_PARAMETERS"),
        (going, "UNKNOWN_JOB_TYPE"),
    ]
    assert [f["field"] for f in error["refused"][0]["fields"]] == ["parameters.mode"]
    # pending takes only the failed job: it alone is named.
    assert pending.status_code == 422, pending.text
    assert pending.json()["error"]["refused_count"] == 1
    assert [r["job_id"] for r in pending.json()["error"]["refused"]] == [refused_choice]
    assert [job["attempt"] for job in unchanged["jobs"]["items"]] == [1, 1, 1]
    assert (done["status"], done["attempt"], done["lock"]) == ("completed", 2, "second")


async def test_a_running_job_restarted_after_its_type_moved_lock_waits_for_its_old_attempt(
    system: System, tmp_path: Path
) -> None:
    """A batch's restart of a running job whose type moved to another lock: the new attempt
    keeps the running attempt's lock, so it starts only once the old one, whose tool ignores
    SIGTERM, has ended (before: it took the new lock and ran beside it)."""
    async with system.client() as client:
        submitted = await client.post(
            "/api/jobs/batch",
            json={"batch_name": "stubborn", "jobs": [_stubborn(tmp_path, "old")]},
        )
        assert submitted.status_code == 201, submitted.text
        batch_id = submitted.json()["batch_id"]
        [old] = submitted.json()["job_ids"]
        await wait_status(client, old, "running")
        await _api_on_changed_types(system, tmp_path)
        response = await client.post(f"/api/batches/{batch_id}/restart")
        assert response.status_code == 202, response.text
        [new] = response.json()["attempts"]
        started = await wait_status(client, new, "running", timeout=60)
        ended = await _job(client, old)
        assert (await client.post(f"/api/batches/{batch_id}/fail")).status_code == 202
    assert ended["status"] == "cancelled"  # before: still "running" beside its new attempt
    assert _at(started, "started_at") >= _at(ended, "finished_at")
    assert len((tmp_path / "starts").read_text().splitlines()) == 2
    assert started["lock"] == "first"


async def test_a_runner_on_a_changed_types_file_fails_parameters_its_type_refuses(
    system: System, tmp_path: Path
) -> None:
    """The API on the old file, the runner on the new one: a choice the API still takes but the
    runner's type took away ends the job failed INVALID_PARAMETERS without running it (before:
    "b" reached the tool); a parameter the runner's type no longer has is left out, not
    refused, so a job valid on both files runs."""
    after = tmp_path / "after.toml"
    after.write_text(AFTER)
    await system.stop_service("runner")
    await system.start_runner(job_types_file=str(after))
    async with system.client() as client:
        refused = await start_job(client, "moving", mode="b")
        kept = await start_job(client, "moving", mode="a", note="old")
        failed = await wait_status(client, refused, "completed", "failed")
        ran = await wait_status(client, kept, "completed", "failed")
    assert (failed["status"], failed["error"]["code"]) == ("failed", "INVALID_PARAMETERS")
    assert "parameters.mode" in failed["error"]["message"]
    assert failed["started_at"] is None
    assert ran["status"] == "completed"
