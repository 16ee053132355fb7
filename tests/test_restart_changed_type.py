"""Running a job again after its job type changed (the types file edited, the API restarted):
the new attempt is held to the type as it is now, not as it was when the job was first
requested, on real servers. The runner keeps the file it started with (it runs a job by the
lock its request names), so what is checked is what the API publishes."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.runners import start_job, wait_status

EMIT = str(Path(__file__).with_name("tools") / "emit.py")


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
        f"{extra}{going}"
    )


BEFORE = _types("first", '{ value = "a" }, { value = "b" }')
# The operator moved the type to another lock, took the choice "b" away and added a parameter
# with a default; "going" is gone.
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


async def _attempts(client: httpx.AsyncClient, job_id: str) -> int:
    job = (await client.get(f"/api/jobs/{job_id}")).json()
    return int(job["attempt"]) if job["latest"] else -1


async def test_a_restart_takes_the_lock_and_defaults_the_type_has_now(
    system: System, tmp_path: Path
) -> None:
    """The new attempt queues on the type's new lock (before: the old one, so it ran beside
    the type's new jobs) and gets the new parameter's default."""
    async with system.client() as client:
        first = await start_job(client, "moving", mode="a")
        await wait_status(client, first, "completed")
        await _api_on_changed_types(system, tmp_path)
        response = await client.post(f"/api/jobs/{first}/restart")
        assert response.status_code == 201, response.text
        again = (await client.get(f"/api/jobs/{response.json()['id']}")).json()
    assert again["lock"] == "second"
    assert again["parameters"] == {"mode": "a", "label": "new"}


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
        attempts = await _attempts(client, first)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["job_id"]) == ("INVALID_PARAMETERS", first)
    assert [(f["field"], f["code"]) for f in error["fields"]] == [
        ("parameters.mode", "INVALID_CHOICE")
    ]
    assert attempts == 1


async def test_a_batch_restart_over_a_removed_type_is_422_and_publishes_nothing(
    system: System, tmp_path: Path
) -> None:
    """A batch holding a job of a type since removed is refused 422 UNKNOWN_JOB_TYPE naming that
    job, as a single job's restart is (before: 202, and an attempt of a type no runner knows).
    A batch's pending goes through the same check."""
    async with system.client() as client:
        submitted = await client.post(
            "/api/jobs/batch",
            json={
                "batch_name": "changed",
                "jobs": [
                    {"job_type": "moving", "parameters": {"mode": "a"}},
                    {"job_type": "going"},
                ],
            },
        )
        assert submitted.status_code == 201, submitted.text
        batch_id = submitted.json()["batch_id"]
        moving, going = submitted.json()["job_ids"]
        for job_id in (moving, going):
            await wait_status(client, job_id, "completed")
        await _api_on_changed_types(system, tmp_path)
        response = await client.post(f"/api/batches/{batch_id}/restart")
        batch = (await client.get(f"/api/batches/{batch_id}")).json()
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["job_id"]) == ("UNKNOWN_JOB_TYPE", going)
    assert [job["attempt"] for job in batch["jobs"]["items"]] == [1, 1]
