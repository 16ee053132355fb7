"""JSON bodies the live API cannot take as they are: a key given twice in one object, a value no
part of jobrunner holds (a lone surrogate escape, a number too large). Every address that reads
JSON answers 400 with a code, the place and a sentence, and stores nothing."""

from __future__ import annotations

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


async def test_every_json_address_refuses_a_key_given_twice_naming_it(system: System) -> None:
    """A job, a batch, a batch's action, a token and an external report with a repeated key
    each answer 400 DUPLICATE_JSON_KEY with the key and its path; nothing is stored (before: the
    last one was taken silently, ``{"batch_name": "x", "batch_name": "y"}`` made batch "y")."""
    json = {"Content-Type": "application/json"}
    async with system.client() as client, worker_client(system.base_url) as worker:
        job = await start_external(client, file="a.pdf")
        await job.report_when_held(worker, progress=1)
        created = await client.post(
            "/api/jobs/batch",
            json={"batch_name": "n", "jobs": [{"job_type": "document", "parameters": {}}]},
        )
        assert created.status_code == 201, created.text
        batch_id = created.json()["batch_id"]
        stored = await stored_count(system.settings)
        answers = {
            "job": await client.post(
                "/api/jobs",
                content=b'{"job_type": "document", "job_type": "quiet"}',
                headers=json,
            ),
            "batch": await client.post(
                "/api/jobs/batch",
                content=b'{"batch_name": "x", "batch_name": "y", "jobs": [{"job_type": "quiet"}]}',
                headers=json,
            ),
            "action": await client.post(
                f"/api/batches/{batch_id}/fail",
                content=b'{"reason": "a", "reason": "b"}',
                headers=json,
            ),
            "token": await client.post(
                "/api/tokens",
                content=b'{"name": "ci", "role": "viewer", "role": "admin"}',
                headers=json,
            ),
            "report": await worker.post(
                job.path,
                content=b'{"lines": [{"text": "a"}, {"text": "a", "text": "b"}]}',
                headers={**json, "Authorization": f"Bearer {job.token}"},
            ),
        }
        tokens = (await client.get("/api/tokens")).json()
        assert await stored_count(system.settings) == stored
    errors = {where: refusal(answer) for where, answer in answers.items()}
    assert {where: e["code"] for where, e in errors.items()} == dict.fromkeys(
        answers, "DUPLICATE_JSON_KEY"
    )
    assert {where: (e["key"], e["path"]) for where, e in errors.items()} == {
        "job": ("job_type", "$.job_type"),
        "batch": ("batch_name", "$.batch_name"),
        "action": ("reason", "$.reason"),
        "token": ("role", "$.role"),
        "report": ("text", "$.lines[1].text"),
    }
    assert 'the key "text" is given twice in the object at $.lines[1]' in str(
        errors["report"]["message"]
    )
    assert "ci" not in [t["name"] for t in tokens]


@pytest.mark.parametrize(
    ("body", "problem", "told"),
    [
        (LONE_SURROGATE, "lone_surrogate", "holds a lone surrogate \\ud800"),
        (HUGE_INTEGER, "number_too_large", "of 5000 characters) is too large to hold"),
    ],
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
