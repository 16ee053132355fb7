"""JSON bodies the live API cannot take as they are: a value no part of jobrunner holds (a lone
surrogate escape, a number too large) answers 400 with a code, the place and a sentence, and
stores nothing."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.batch_submit_support import stored_count
from tests.external_support import EXTERNAL_TYPES, start_external, worker_client
from tests.system import System

LONE_SURROGATE = b'{"job_type": "document", "parameters": {"file": "a\\ud800.pdf"}}'
HUGE_INTEGER = b'{"job_type": "document", "parameters": {"file": ' + b"1" * 5000 + b"}}"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES, lease_ttl_seconds=15.0)


def refusal(response: object) -> dict[str, object]:
    assert response.status_code == 400, response.text  # type: ignore[attr-defined]
    error: dict[str, object] = response.json()["error"]  # type: ignore[attr-defined]
    return error


async def test_a_large_bad_batch_is_refused_while_other_requests_are_answered(
    system: System,
) -> None:
    """A 4 MiB batch whose last job holds a lone surrogate answers plain 400 MALFORMED_JSON (a
    body over 1 MiB is not read a second time on the event loop to name the place), and a list
    of the jobs sent at the same time is answered too; nothing is stored."""
    job = b'{"job_type": "document", "parameters": {"file": "a.pdf"}}, '
    body = (
        b'{"batch_name": "large", "jobs": ['
        + job * (4 * 1024 * 1024 // len(job))
        + b'{"job_type": "document", "parameters": {"file": "\\ud800"}}]}'
    )
    async with system.client() as client:
        refused, listed = await asyncio.gather(
            client.post(
                "/api/jobs/batch", content=body, headers={"Content-Type": "application/json"}
            ),
            client.get("/api/jobs"),
        )
    assert refusal(refused) == {
        "code": "MALFORMED_JSON",
        "message": "The request body is not valid JSON.",
    }
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"] == []
    assert await stored_count(system.settings) == 0


@pytest.mark.parametrize(
    ("body", "problem", "told"),
    [
        (LONE_SURROGATE, "lone_surrogate", "holds a lone surrogate \\ud800"),
        (HUGE_INTEGER, "number_too_large", "of 5000 characters) is too large to hold"),
    ],
    ids=["lone_surrogate", "huge_integer"],
)
async def test_a_value_no_part_holds_is_told_with_its_place(
    system: System, body: bytes, problem: str, told: str
) -> None:
    """A lone surrogate escape and a 5,000-digit number in a job's parameters answer 400
    UNSUPPORTED_JSON_VALUE at $.parameters.file with a sentence saying what is wrong (before:
    MALFORMED_JSON "not valid JSON", though it is); no job is stored."""
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", content=body, headers={"Content-Type": "application/json"}
        )
    error = refusal(response)
    assert (error["code"], error["problem"], error["path"]) == (
        "UNSUPPORTED_JSON_VALUE",
        problem,
        "$.parameters.file",
    )
    assert told in str(error["message"]), error["message"]
    assert await stored_count(system.settings) == 0


async def test_a_report_percent_past_any_float_is_told_with_its_place(system: System) -> None:
    """A report's ``{"percent": 1e400}`` answers 400 UNSUPPORTED_JSON_VALUE at
    $.progress.percent; the job goes on and takes the next report."""
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=1)
        refused = await worker.post(
            job.path,
            content=b'{"progress": {"percent": 1e400}}',
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {job.token}"},
        )
        taken = await job.report(worker, progress={"percent": 50})
    error = refusal(refused)
    assert (error["code"], error["path"]) == ("UNSUPPORTED_JSON_VALUE", "$.progress.percent")
    assert "(1e400) is too large to hold" in str(error["message"])
    assert taken.status_code == 200, taken.text
