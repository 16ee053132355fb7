"""GET /api/jobs and a job's log pages in front of Litestar's router
(services/api/jobs_fastpath.py): the same answers, bytes and headers, as Litestar's own routes,
which still answer every request the fast path does not accept outright."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.services.api.app import create_app
from jobrunner.services.api.jobs_fastpath import JobReadsFastPath
from jobrunner.services.api.routes.jobs import LIST_PARAMETERS
from jobrunner.services.api.routes.logs import LOG_PARAMETERS
from jobrunner.services.api.security.middleware import known_query_parameters
from jobrunner.services.api.security.sessions import COOKIE_NAME
from tests.history_support import BASE_TIME, job_events, publish, wait_projected
from tests.system import System

# Filters, pages and refusals: what the fast path answers itself and what it hands over.
LIST = "/api/jobs"
LOG = "/api/jobs/j00/logs"
QUERIES: list[tuple[str, dict[str, Any]]] = [
    (LIST, {}),
    (LIST, {"limit": 3}),
    (LIST, {"status": "completed,failed"}),
    (LIST, {"status": ["failed", "cancelled"]}),
    (LIST, {"job_type": "scraper", "status": "completed"}),
    (LIST, {"search": "plz"}),
    (LIST, {"batch_id": "b1"}),
    (LIST, {"created_from": "2026-01-01T00:03:00Z", "archived": "all"}),
    (LIST + "/", {"limit": 2}),
    (LOG, {}),
    (LOG, {"limit": 2, "after": 1}),
    (LOG, {"tail": 2, "level": "ERROR,INFO"}),
    (LIST, {"status": "exploded"}),
    (LIST, {"limit": 0}),
    (LIST, {"limit": 1, "limit ": 2}),
    (LIST, {"cursor": "not-a-cursor"}),
    (LIST, {"bogus": 1}),
    (LOG, {"after": 1, "tail": 2}),
]
ANSWERED = 12  # the first ones; the others are refused (400)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, auth=True)


@pytest.fixture
async def system(settings: Settings) -> AsyncIterator[System]:
    batch: list[events.Event] = []
    # No running job: its duration grows between two answers.
    statuses = [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PENDING]
    for n in range(12):
        batch += job_events(
            f"j{n:02d}",
            ("scraper", "enrich_email")[n % 2],
            n,
            statuses[n % 4],
            {"plz": str(n)},
            {"found": n} if n % 3 == 0 else None,
            "b1" if n < 4 else None,
            lines=("INFO one", "ERROR two", "INFO three") if n == 0 else (),
        )
    # Two jobs of the owner a restricted token sees.
    for n in (12, 13):
        batch.append(
            events.JobRequested(
                job_id=f"j{n:02d}",
                job_type="scraper",
                parameters={},
                requested_by="ci",
                occurred_at=BASE_TIME + timedelta(minutes=n),
            )
        )
    last = await publish(settings, batch)
    running = System(settings)
    await running.start_projector()
    await running.start_api()
    try:
        await wait_projected(settings, last)
        yield running
    finally:
        await running.stop()


def fast_path_of(system: System) -> tuple[Any, JobReadsFastPath]:
    assert system._server is not None
    app = system._server.config.app
    assert isinstance(app.asgi_handler, JobReadsFastPath)
    return app, app.asgi_handler


async def answers(app: Any, headers: dict[str, str]) -> list[tuple[int, dict[str, str], bytes]]:
    """Each of QUERIES asked of the running app in-process (its lifespan is the server's)."""
    out = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1", headers=headers
    ) as client:
        for path, params in QUERIES:
            response = await client.get(path, params=params)
            out.append((response.status_code, dict(response.headers), response.content))
    return out


async def test_fast_path_answers_as_litestar_does(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For an admin token, a token that sees only its own jobs and a session cookie: every
    request of QUERIES gets the same status, headers and bytes with the fast path as from
    Litestar's routes alone; and the fast path answers the accepted ones itself."""
    app, fast = fast_path_of(system)
    restricted = await system.create_token("ci", "viewer", own_jobs_only=True)
    callers = [
        {"Authorization": f"Bearer {system.admin_token}"},
        {"Authorization": f"Bearer {restricted}"},
        {"Cookie": f"{COOKIE_NAME}={await system.session_cookie()}"},
    ]
    litestar = fast.handler
    handed_over: list[str] = []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        handed_over.append(scope["query_string"].decode())
        await litestar(scope, receive, send)

    pages = []
    for headers in callers:
        handed_over.clear()
        monkeypatch.setattr(fast, "handler", counting)
        through_fast_path = await answers(app, headers)
        monkeypatch.setattr(fast, "handler", litestar)
        monkeypatch.setattr(app, "asgi_handler", litestar)
        litestar_only = await answers(app, headers)
        monkeypatch.setattr(app, "asgi_handler", fast)

        # The restricted token sees no j00: its log is a 404.
        answered = ANSWERED - (3 if headers is callers[1] else 0)
        expected = [200] * 9 + [404 if headers is callers[1] else 200] * 3
        assert [s for s, _, _ in through_fast_path] == expected + [400] * (len(QUERIES) - ANSWERED)
        for (status, head, body), (status2, head2, body2) in zip(
            through_fast_path, litestar_only, strict=True
        ):
            assert (status, head, body) == (status2, head2, body2)
        # The refusals, and only they, went Litestar's way.
        assert len(handed_over) == len(QUERIES) - answered
        pages.append(msgspec.json.decode(through_fast_path[0][2]))
    # The restricted token's page: its owner's jobs only.
    first = pages[1]
    assert [job["id"] for job in first["items"]] == ["j13", "j12"]


async def test_refused_callers_get_litestars_answers(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No credential, an unknown token, a host that is not allowed: Litestar's answers."""
    app, fast = fast_path_of(system)
    for headers in (
        {},
        {"Authorization": "Bearer jrt_0000000000000000_nope"},
        {"Authorization": f"Bearer {system.admin_token}", "Host": "evil.example"},
    ):
        through_fast_path = await answers(app, headers)
        monkeypatch.setattr(app, "asgi_handler", fast.handler)
        litestar_only = await answers(app, headers)
        monkeypatch.setattr(app, "asgi_handler", fast)
        assert through_fast_path == litestar_only
        assert {status for status, _, _ in through_fast_path} <= {400, 401}


def test_the_fast_path_takes_the_query_parameters_the_routes_declare(settings: Settings) -> None:
    """The access middleware refuses a query parameter its route does not declare; the fast path
    leaves that to ``Query`` with the route's list: the two lists must be the same."""
    app = create_app(settings)
    for path, known in (("/api/jobs", LIST_PARAMETERS), ("/api/jobs/j00/logs", LOG_PARAMETERS)):
        handler = app.asgi_router.handle_routing(path=path, method="GET")[1]
        assert known_query_parameters(handler) == frozenset(known)
