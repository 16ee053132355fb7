"""Submitting a batch (POST /api/jobs/batch, POST /api/batches): all or nothing, every job
checked first, 201 once the batch is sealed in JetStream."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.batch_submit_support import batch_body, job_rows, post_batch, stored_count
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, wait_status


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=RUNNER_TYPES, batch_max_body_bytes=1024 * 1024
    )


async def test_a_batch_of_mixed_types_runs_every_job(system: System) -> None:
    """A batch of emit and internal jobs answers 201 with one id per job, and all complete."""
    body = batch_body(
        ("emit", {"lines": 2}), ("internal_counts", {"lines": 1}), ("emit", {"lines": 1})
    )
    async with system.client() as client:
        response = await post_batch(client, body)
        assert response.status_code == 201, response.text
        created = response.json()
        assert created["batch_name"] == "test batch"
        assert created["total_jobs"] == 3
        assert len(set(created["job_ids"])) == 3
        for job_id in created["job_ids"]:
            job = await wait_status(client, job_id, "completed", "failed")
            assert job["status"] == "completed", job
            assert job["batch_id"] == created["batch_id"]
    rows = {r["id"]: r for r in await job_rows(system.settings, created["batch_id"])}
    assert [rows[j]["job_type"] for j in created["job_ids"]] == [
        "emit",
        "internal_counts",
        "emit",
    ]


async def test_seed_004_path_and_wrapper_are_accepted(system: System) -> None:
    """POST /api/batches with {"batch": {...}} (seed 004's shape) starts the batch too."""
    body = {"batch": batch_body(("emit", {"lines": 1}), name="pdf_import_2025_03")}
    async with system.client() as client:
        response = await post_batch(client, body, path="/api/batches")
        assert response.status_code == 201, response.text
        job_id = response.json()["job_ids"][0]
        assert (await wait_status(client, job_id, "completed"))["batch_id"]


@pytest.mark.parametrize("bad_index", [0, 3, 6])
async def test_one_invalid_job_refuses_the_batch_and_stores_nothing(
    system: System, bad_index: int
) -> None:
    """One job with a bad parameter (first, middle or last) answers 422 naming its index and
    field, and no event of the batch reaches the stream."""
    jobs = [("emit", {"lines": 1})] * 7
    jobs[bad_index] = ("emit", {"lines": "many"})
    async with system.client() as client:
        response = await post_batch(client, batch_body(*jobs))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_BATCH"
    assert error["errors"] == [
        {
            "index": bad_index,
            "field": "parameters.lines",
            "code": "INVALID_TYPE",
            "message": error["errors"][0]["message"],
        }
    ]
    assert await stored_count(system.settings) == 0


async def test_unknown_job_type_in_a_batch_is_named(system: System) -> None:
    """A job of a type that does not exist is refused with its index and UNKNOWN_JOB_TYPE."""
    body = batch_body(("emit", {}), ("no_such_type", {}))
    async with system.client() as client:
        response = await post_batch(client, body)
    assert response.status_code == 422
    [problem] = response.json()["error"]["errors"]
    assert (problem["index"], problem["field"], problem["code"]) == (
        1,
        "job_type",
        "UNKNOWN_JOB_TYPE",
    )


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"batch_name": "x", "jobs": []}, "jobs", "EMPTY"),
        ({"batch_name": "x"}, "jobs", "REQUIRED"),
        ({"batch_name": "x", "jobs": {"a": 1}}, "jobs", "INVALID_TYPE"),
        ({"jobs": [{"job_type": "emit"}]}, "batch_name", "REQUIRED"),
        ({"batch_name": "", "jobs": [{"job_type": "emit"}]}, "batch_name", "INVALID_LENGTH"),
        ({"batch_name": "a" * 201, "jobs": [{"job_type": "emit"}]}, "batch_name", "INVALID_LENGTH"),
        ({"batch_name": "a\nb", "jobs": [{"job_type": "emit"}]}, "batch_name", "INVALID_CHARACTER"),
        ({"batch_name": "x", "jobs": [{"job_type": "emit"}], "x": 1}, "x", "UNKNOWN_FIELD"),
        ([1, 2], "", "NOT_AN_OBJECT"),
    ],
)
async def test_a_malformed_batch_is_refused_with_the_field(
    system: System, body: object, field: str, code: str
) -> None:
    """An empty job list, a missing or overlong name, an unknown field: 422 naming the field."""
    async with system.client() as client:
        response = await post_batch(client, body)
    assert response.status_code == 422, response.text
    problems = response.json()["error"]["errors"]
    assert {"index": None, "field": field, "code": code} in [
        {k: p[k] for k in ("index", "field", "code")} for p in problems
    ]


async def test_a_job_that_is_not_an_object_is_named(system: System) -> None:
    """A job given as a string is refused with its index."""
    async with system.client() as client:
        response = await post_batch(
            client, {"batch_name": "x", "jobs": [{"job_type": "emit"}, "emit"]}
        )
    assert response.status_code == 422
    [problem] = response.json()["error"]["errors"]
    assert (problem["index"], problem["code"]) == (1, "NOT_AN_OBJECT")


async def test_many_bad_jobs_are_listed_up_to_a_cap_and_counted(system: System) -> None:
    """500 bad jobs answer the first 50 problems and say how many more there are."""
    body = batch_body(*[("emit", {"lines": "x"})] * 500)
    async with system.client() as client:
        response = await post_batch(client, body)
    error = response.json()["error"]
    assert len(error["errors"]) == 50
    assert error["more_errors"] == 450
    assert "500 of its jobs" in error["message"]


async def test_more_jobs_than_batch_max_jobs_are_refused(settings: Settings) -> None:
    """A batch over batch_max_jobs is refused with TOO_MANY_JOBS, naming the limit."""
    system = System(msgspec.structs.replace(settings, batch_max_jobs=3))
    await system.start()
    try:
        async with system.client() as client:
            response = await post_batch(client, batch_body(*[("emit", {})] * 4))
    finally:
        await system.stop()
    assert response.status_code == 422
    [problem] = response.json()["error"]["errors"]
    assert problem["code"] == "TOO_MANY_JOBS"
    assert "at most 3" in problem["message"]


async def test_a_body_over_the_batch_limit_answers_413(system: System) -> None:
    """A batch body over batch_max_body_bytes answers 413 BODY_TOO_LARGE naming the limit."""
    body = batch_body(*[("emit", {"interval": "1" * 200})] * 6000)  # about 1.4 MB
    async with system.client() as client:
        response = await post_batch(client, body)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "BODY_TOO_LARGE"
    assert error["limit"] == 1024 * 1024
    assert await stored_count(system.settings) == 0


async def test_a_batch_body_may_exceed_the_app_wide_limit(settings: Settings) -> None:
    """A 1.4 MB batch is accepted where the batch limit allows it (other routes stop at 1 MiB)."""
    system = System(msgspec.structs.replace(settings, batch_max_body_bytes=4 * 1024 * 1024))
    await system.start_projector()
    await system.start_api()
    try:
        body = batch_body(*[("emit", {"interval": "1" * 200})] * 6000)
        async with system.client() as client:
            response = await post_batch(client, body)
    finally:
        await system.stop()
    assert response.status_code == 201, response.text[:300]
    assert response.json()["total_jobs"] == 6000
