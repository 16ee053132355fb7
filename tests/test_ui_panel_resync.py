"""The side panel's job list (on every page, here /jobs) in a real browser, signed in with a
token limited to its own jobs, while Postgres is frozen (SIGSTOP) and the user's running job
ends. The all-jobs stream cannot read the job's owner past ``stream_read_timeout_seconds`` and
hides its end (it fails closed); once Postgres answers and the projector holds the end, the
stream says ``resync`` and the panel loads its list again: the job shows completed with no
reload of the page. (Without updates.js handling ``resync`` the row stayed "running" until the
next reload or reconnect.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from playwright.async_api import Browser, Page, Response, expect

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.services.api import streamlookups
from tests.browser import open_page
from tests.history_support import job_events, publish, wait_projected
from tests.system import System
from tests.tools.api_parts import AcquiredDeadlines
from tests.tools.postgres_processes import frozen_postgres

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

# As in test_streams_postgres_frozen: health's bound below the stream's, the read deadline above.
BOUND = 2.0
HEALTH_BOUND = 1.0
READ_DEADLINE = 6.0
KEEPALIVE = 0.5


@pytest.fixture
def settings(settings: Settings, own_postgres: EmbeddedPostgres) -> Settings:
    return msgspec.structs.replace(
        settings,
        database_url=own_postgres.url,
        api_read_timeout_seconds=READ_DEADLINE,
        health_postgres_timeout_seconds=HEALTH_BOUND,
        stream_read_timeout_seconds=BOUND,
        sse_keepalive_seconds=KEEPALIVE,
        auth=True,
    )


@pytest.fixture
async def system(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[System]:
    """Projector and API, no runner: the test publishes the job's events."""
    # Reads tried again soon after a failed one: the resync follows the thaw closely.
    monkeypatch.setattr(streamlookups, "PAUSE_SECONDS", 0.5)
    async with System(settings) as running:
        await running.start_projector()
        await running.start_api()
        await running.wait_healthy()
        yield running


@pytest.fixture
async def own_jobs_page(browser: Browser, system: System) -> AsyncIterator[Page]:
    """A page signed in with a token that sees only its own jobs (``mine``)."""
    mine = await system.create_token("mine", "operator", own_jobs_only=True)
    opened = await open_page(browser, system)
    await system.sign_in(opened.context, mine)
    yield opened
    errors = opened.script_errors  # type: ignore[attr-defined]
    await opened.context.close()
    assert not errors, errors


async def test_the_panel_shows_a_job_that_ended_hidden_by_a_frozen_postgres_after_the_thaw(
    system: System,
    own_postgres: EmbeddedPostgres,
    own_jobs_page: Page,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """My job ends while Postgres is frozen past the stream's bound; after the thaw the panel
    lists it completed, the page not reloaded and its stream not reconnected."""
    page = own_jobs_page
    settings = system.settings
    requested, *rest = job_events("panel-a", "emit", status=JobStatus.RUNNING, lines=["one"])
    assert isinstance(requested, events.JobRequested)
    requested = msgspec.structs.replace(requested, requested_by="mine")
    await wait_projected(settings, await publish(settings, [requested, *rest]))
    streams: list[str] = []

    def opened(response: Response) -> None:
        if response.url.endswith("/api/jobs/stream"):
            streams.append(response.url)

    page.on("response", opened)
    await page.goto("/jobs")
    await page.evaluate("window.sameDocument = true")
    await page.locator("#panel-open").click()
    row = page.locator('#panel-list [data-job-id="panel-a"]')
    await expect(row).to_have_attribute("data-status", "running", timeout=30_000)
    assert streams, "the page opened no update stream"

    with frozen_postgres(own_postgres):
        looking = AcquiredDeadlines(system, monkeypatch, watched=BOUND)
        await publish(
            settings,
            [
                events.StatusChanged(
                    job_id="panel-a",
                    event_id=events.terminal_event_id("panel-a"),
                    status=JobStatus.COMPLETED,
                )
            ],
        )
        async with asyncio.timeout(30):
            await looking.began.wait()  # the stream looks the job's owner up
        await asyncio.sleep(BOUND * 1.5)  # the freeze's length from the look-up on: past it
        looking.stop()
    await expect(row).to_have_attribute("data-status", "completed", timeout=60_000)
    assert await page.evaluate("window.sameDocument") is True
    assert len(streams) == 1, streams  # the list reloaded on resync, not on a reconnect
