"""Finding any job: filters, free-text search and cursor pages on GET /api/jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts.events import JobStatus
from tests.history_support import job_events, publish, reading_system, wait_projected
from tests.system import System


@pytest.fixture
async def history(settings: Settings) -> AsyncIterator[System]:
    """Ten jobs of known types, statuses, times, parameters, results and batches."""
    batch = []
    specs = [
        ("j00", "scraper", JobStatus.COMPLETED, {"plz_filter": "4"}, {"found": 89}, None),
        ("j01", "scraper", JobStatus.FAILED, {"plz_filter": "0"}, None, None),
        ("j02", "enrich_email", JobStatus.COMPLETED, {}, {"emails": "info@example.org"}, "b1"),
        ("j03", "enrich_email", JobStatus.CANCELLED, {}, None, "b1"),
        ("j04", "enrich_search", JobStatus.RUNNING, {"search_provider": "serper"}, None, "b1"),
        ("j05", "enrich_search", JobStatus.PENDING, {"search_provider": "brave"}, None, None),
        ("j06", "blacklist_sync", JobStatus.COMPLETED, {"dry_run": True}, None, "b2"),
        ("j07", "blacklist_sync", JobStatus.FAILED, {}, {"note": "100%_done"}, None),
        ("j08", "scraper", JobStatus.PENDING, {"plz_filter": "5"}, None, None),
        ("j09", "scraper", JobStatus.COMPLETED, {"plz_filter": "6"}, None, None),
    ]
    for minute, (job_id, job_type, status, parameters, result, batch_id) in enumerate(specs):
        batch += job_events(job_id, job_type, minute, status, parameters, result, batch_id)
    last = await publish(settings, batch)
    async with reading_system(settings) as system:
        await wait_projected(settings, last)
        yield system


async def ids(system: System, **params: object) -> list[str]:
    async with system.client() as client:
        response = await client.get("/api/jobs", params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["items"]]


async def test_jobs_are_listed_newest_first(history: System) -> None:
    """Without filters the list shows every job, the newest first."""
    assert await ids(history) == [f"j{i:02d}" for i in range(9, -1, -1)]


async def test_several_statuses_filter_together(history: System) -> None:
    """status=failed&status=cancelled shows the failed and the cancelled jobs only."""
    assert await ids(history, status=["failed", "cancelled"]) == ["j07", "j03", "j01"]
    assert await ids(history, status="failed,cancelled") == ["j07", "j03", "j01"]


async def test_several_job_types_filter_together(history: System) -> None:
    """job_type may be repeated; statuses and types combine."""
    found = await ids(history, job_type=["enrich_email", "blacklist_sync"])
    assert found == ["j07", "j06", "j03", "j02"]
    assert await ids(history, job_type="scraper", status="completed") == ["j09", "j00"]


async def test_search_finds_text_in_type_parameters_and_result(history: System) -> None:
    """Free text matches the job type, a parameter value or the result, case-insensitively."""
    assert await ids(history, search="SERPER") == ["j04"]
    assert await ids(history, search="info@example") == ["j02"]
    assert await ids(history, search="blacklist") == ["j07", "j06"]


async def test_search_takes_like_wildcards_literally(history: System) -> None:
    """A % or _ in the search text matches only itself."""
    assert await ids(history, search="100%_") == ["j07"]
    assert await ids(history, search="%") == ["j07"]


async def test_batch_filter_shows_the_batch(history: System) -> None:
    """batch_id narrows the list to one batch's jobs."""
    assert await ids(history, batch_id="b1") == ["j04", "j03", "j02"]


async def test_created_range_is_from_inclusive_to_exclusive(history: System) -> None:
    """created_from includes its minute, created_to excludes its own."""
    found = await ids(
        history, created_from="2026-01-01T00:02:00Z", created_to="2026-01-01T00:05:00Z"
    )
    assert found == ["j04", "j03", "j02"]
    assert await ids(history, created_from="2026-01-01T01:00:00+01:00") == ["j00"][:0] + [
        f"j{i:02d}" for i in range(9, -1, -1)
    ]


async def test_cursor_pages_stay_stable_while_new_jobs_arrive(
    history: System, settings: Settings
) -> None:
    """Paging on with next_cursor after new jobs arrived shows every old job exactly once."""
    seen: list[str] = []
    async with history.client() as client:
        response = await client.get("/api/jobs", params={"limit": 3})
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [job["id"] for job in page["items"]]
        newer = []
        for n in range(3):
            newer += job_events(f"new{n}", minute=100 + n)
        await wait_projected(settings, await publish(settings, newer))
        while page["next_cursor"]:
            page = (
                await client.get("/api/jobs", params={"limit": 3, "cursor": page["next_cursor"]})
            ).json()
            seen += [job["id"] for job in page["items"]]
        first = (await client.get("/api/jobs", params={"limit": 3})).json()
    assert seen == [f"j{i:02d}" for i in range(9, -1, -1)]
    assert [job["id"] for job in first["items"]] == ["new2", "new1", "new0"]


async def test_cursor_keeps_the_filters_of_its_pages(history: System) -> None:
    """A filtered list pages through exactly the filtered jobs."""
    seen: list[str] = []
    cursor = None
    async with history.client() as client:
        while True:
            params: dict[str, object] = {"limit": 1, "job_type": "scraper"}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/api/jobs", params=params)).json()
            seen += [job["id"] for job in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
    assert seen == ["j09", "j08", "j01", "j00"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"status": ["failed", "nope"]}, "status"),
        ({"job_type": "bad type!"}, "job_type"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": ["5", "6"]}, "limit"),
        ({"created_from": "yesterday"}, "created_from"),
        ({"created_to": "2026-13-01"}, "created_to"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"batch_id": "a b"}, "batch_id"),
        ({"search": "x" * 201}, "search"),
    ],
)
async def test_bad_filter_values_answer_400_naming_the_field(
    history: System, params: dict[str, object], field: str
) -> None:
    """Each bad filter value or unknown parameter gets a 400 that names the field."""
    async with history.client() as client:
        response = await client.get("/api/jobs", params=params)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_QUERY"
    assert error["field"] == field


async def test_unknown_query_parameter_answers_400(history: System) -> None:
    """A misspelt filter is rejected instead of silently widening the list."""
    async with history.client() as client:
        response = await client.get("/api/jobs", params={"stauts": "failed"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "UNKNOWN_QUERY_PARAMETER"
    assert "stauts" in error["message"]


async def test_page_reports_the_sequence_it_reflects(history: System) -> None:
    """Each page carries projected_seq, where a job_update stream can start without a gap."""
    async with history.client() as client:
        page = (await client.get("/api/jobs")).json()
        health = (await client.get("/health")).json()
    assert page["projected_seq"] == health["projected_seq"]


async def test_empty_page_reports_the_sequence_it_reflects(history: System) -> None:
    """A filter that finds nothing still says which stream sequence the empty page reflects."""
    async with history.client() as client:
        page = (await client.get("/api/jobs", params={"search": "no such text"})).json()
        health = (await client.get("/health")).json()
    assert page["items"] == []
    assert page["next_cursor"] is None
    assert page["projected_seq"] == health["projected_seq"] > 0
