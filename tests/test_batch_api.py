"""Reading batches over HTTP: GET /api/batches (filters, pages, scope) and GET /api/batches/{id}
(aggregates and jobs in batch order), and the batch fields of jobs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from tests.batch_support import attempt, batch_events, batch_job_id, ended
from tests.history_support import BASE_TIME, publish, wait_projected
from tests.system import System


async def publish_projected(settings: Settings, stream: list[Any]) -> None:
    await wait_projected(settings, await publish(settings, stream))


async def get_ok(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_batch_shows_its_aggregates(projector_and_api: System, settings: Settings) -> None:
    """A batch shows its name, types, counters, progress, derived status and times."""
    stream = batch_events("b1", 4, name="Nightly", job_types=("scraper", "enrich_email"))
    stream += ended("b1-0", JobStatus.COMPLETED, BASE_TIME + timedelta(minutes=1))
    stream += ended("b1-1", JobStatus.FAILED, BASE_TIME + timedelta(minutes=2))
    stream.append(events.StatusChanged(job_id="b1-2", status=JobStatus.RUNNING))
    await publish_projected(settings, stream)
    async with projector_and_api.client() as client:
        batch = await get_ok(client, "/api/batches/b1")
    expected = {
        "id": "b1",
        "name": "Nightly",
        "status": "running",
        "total_jobs": 4,
        "pending_jobs": 1,
        "processing_jobs": 1,
        "completed_jobs": 1,
        "failed_jobs": 1,
        "cancelled_jobs": 0,
        "progress_percent": 50.0,
        "job_types": ["enrich_email", "scraper"],
        "archived": False,
        "failed_reason": None,
        "requested_by": None,
        "finished_at": None,
    }
    assert {k: batch[k] for k in expected} == expected
    assert batch["started_at"] == "2026-01-01T00:01:00Z"


async def test_batch_jobs_come_in_batch_order_in_pages(
    projector_and_api: System, settings: Settings
) -> None:
    """The batch's jobs are listed by their place in the batch, a page at a time, none twice."""
    await publish_projected(settings, batch_events("b1", 7))
    seen: list[int] = []
    cursor = None
    async with projector_and_api.client() as client:
        while True:
            params: dict[str, Any] = {"jobs_limit": 3}
            if cursor:
                params["jobs_cursor"] = cursor
            page = (await get_ok(client, "/api/batches/b1", **params))["jobs"]
            seen += [job["batch_index"] for job in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert seen == list(range(7))


async def test_batch_lists_latest_attempts_unless_all_are_asked_for(
    projector_and_api: System, settings: Settings
) -> None:
    """A restarted job is listed once, as its newest attempt; attempts=all shows every attempt
    in order, the older ones not latest."""
    stream = batch_events("b1", 2)
    stream += ended("b1-1", JobStatus.FAILED)
    stream.append(attempt("b1", 1, 2))
    await publish_projected(settings, stream)
    async with projector_and_api.client() as client:
        latest = (await get_ok(client, "/api/batches/b1"))["jobs"]["items"]
        every = (await get_ok(client, "/api/batches/b1", attempts="all"))["jobs"]["items"]
        batch = await get_ok(client, "/api/batches/b1")
    assert [(j["id"], j["attempt"]) for j in latest] == [("b1-0", 1), ("b1-1-a2", 2)]
    assert [(j["id"], j["latest"], j["attempt_of"]) for j in every] == [
        ("b1-0", True, None),
        ("b1-1", False, None),
        ("b1-1-a2", True, "b1-1"),
    ]
    # Every latest attempt is waiting again: the batch is pending (it counts the new attempt).
    assert (batch["pending_jobs"], batch["failed_jobs"], batch["status"]) == (2, 0, "pending")


async def test_unknown_batch_answers_404(projector_and_api: System) -> None:
    """Asking for a batch that does not exist answers 404 BATCH_NOT_FOUND with a sentence."""
    async with projector_and_api.client() as client:
        response = await client.get("/api/batches/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "BATCH_NOT_FOUND"
    assert "nope" in response.json()["error"]["message"]


async def several_batches(settings: Settings) -> None:
    """Five batches a minute apart (b0 oldest): b1 completed, b2 archived, b3 of type enrich_email,
    b4 named 'Weekly export'."""
    stream: list[Any] = []
    for n in range(5):
        stream += batch_events(
            f"b{n}",
            1,
            name="Weekly export" if n == 4 else None,
            job_types=("enrich_email",) if n == 3 else ("scraper",),
            at=BASE_TIME + timedelta(minutes=n),
        )
    stream += ended(batch_job_id("b1", 0), JobStatus.COMPLETED)
    stream.append(events.BatchArchived(batch_id="b2"))
    await publish_projected(settings, stream)


async def listed(client: httpx.AsyncClient, **params: Any) -> list[str]:
    return [b["id"] for b in (await get_ok(client, "/api/batches", **params))["items"]]


async def test_batch_list_is_newest_first_in_stable_pages(
    projector_and_api: System, settings: Settings
) -> None:
    """Batches come newest first, page by page, each once."""
    await several_batches(settings)
    async with projector_and_api.client() as client:
        first = await get_ok(client, "/api/batches", limit=2, archived="all")
        second = await get_ok(
            client, "/api/batches", limit=2, archived="all", cursor=first["next_cursor"]
        )
        third = await get_ok(
            client, "/api/batches", limit=2, archived="all", cursor=second["next_cursor"]
        )
    ids = [b["id"] for page in (first, second, third) for b in page["items"]]
    assert ids == ["b4", "b3", "b2", "b1", "b0"]
    assert third["next_cursor"] is None
    assert first["projected_seq"] > 0


async def test_batch_list_filters(projector_and_api: System, settings: Settings) -> None:
    """Each filter narrows the list: status, archived (hidden by default), job type, search, and
    the creation window."""
    await several_batches(settings)
    async with projector_and_api.client() as client:
        assert await listed(client) == ["b4", "b3", "b1", "b0"]
        assert await listed(client, archived="true") == ["b2"]
        assert await listed(client, status="completed") == ["b1"]
        assert await listed(client, status="pending,completed") == ["b4", "b3", "b1", "b0"]
        assert await listed(client, job_type="enrich_email") == ["b3"]
        assert await listed(client, search="weekly") == ["b4"]
        assert await listed(client, search="b0") == ["b0"]
        window = {
            "created_from": (BASE_TIME + timedelta(minutes=1)).isoformat(),
            "created_to": (BASE_TIME + timedelta(minutes=3)).isoformat(),
        }
        assert await listed(client, archived="all", **window) == ["b2", "b1"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"archived": "maybe"}, "archived"),
        ({"limit": "0"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"created_from": "yesterday"}, "created_from"),
        ({"job_type": "bad type!"}, "job_type"),
    ],
)
async def test_a_bad_batch_filter_answers_400_naming_it(
    projector_and_api: System, params: dict[str, str], field: str
) -> None:
    """A filter value the list cannot take answers 400 INVALID_QUERY naming the parameter."""
    async with projector_and_api.client() as client:
        response = await client.get("/api/batches", params=params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_QUERY"
    assert response.json()["error"]["field"] == field


async def test_an_unknown_parameter_of_a_batch_answers_400(
    projector_and_api: System, settings: Settings
) -> None:
    """A typo in a parameter of the batch page answers 400, not a silently different page."""
    await publish_projected(settings, batch_events("b1", 1))
    async with projector_and_api.client() as client:
        response = await client.get("/api/batches/b1", params={"job_limit": 5})
        bad_attempts = await client.get("/api/batches/b1", params={"attempts": "some"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "UNKNOWN_QUERY_PARAMETER"
    assert bad_attempts.status_code == 400
    assert bad_attempts.json()["error"]["field"] == "attempts"


async def test_own_jobs_token_sees_only_the_batches_it_requested(
    projector_and_api: System, settings: Settings
) -> None:
    """A token limited to its own jobs lists only its batches and gets 404 for anyone else's."""
    await publish_projected(
        settings,
        batch_events("mine", 1, requested_by="alice")
        + batch_events("theirs", 1, requested_by="bob"),
    )
    alice = await projector_and_api.create_token("alice", "operator", own_jobs_only=True)
    async with projector_and_api.client(token=alice) as client:
        ids = await listed(client)
        own = await client.get("/api/batches/mine")
        other = await client.get("/api/batches/theirs")
    async with projector_and_api.client() as admin:
        everything = await listed(admin)
    assert ids == ["mine"]
    assert own.status_code == 200
    assert [j["id"] for j in own.json()["jobs"]["items"]] == ["mine-0"]
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "BATCH_NOT_FOUND"
    assert sorted(everything) == ["mine", "theirs"]


async def test_job_list_hides_archived_jobs_unless_asked(
    projector_and_api: System, settings: Settings
) -> None:
    """GET /api/jobs leaves archived jobs out; archived=true lists only them, all lists both."""
    stream = batch_events("b1", 2)
    stream.append(events.JobArchived(job_id="b1-0"))
    await publish_projected(settings, stream)
    async with projector_and_api.client() as client:
        default = [j["id"] for j in (await get_ok(client, "/api/jobs"))["items"]]
        only = (await get_ok(client, "/api/jobs", archived="true"))["items"]
        both = [j["id"] for j in (await get_ok(client, "/api/jobs", archived="all"))["items"]]
        bad = await client.get("/api/jobs", params={"archived": "yes"})
    assert default == ["b1-1"]
    assert [(j["id"], j["archived"], j["batch_id"], j["batch_index"]) for j in only] == [
        ("b1-0", True, "b1", 0)
    ]
    assert sorted(both) == ["b1-0", "b1-1"]
    assert bad.status_code == 400
