"""The jobs page with no job running (so no job stream open: only the all-jobs stream) in a real
browser while NATS is frozen (SIGSTOP of a real nats-server): past ``nats_silence_seconds`` it
shows the connection banner and hides it once NATS answers again; a shorter freeze shows
nothing. (Before, only a running job's card told it: an idle list showed no banner at all.)"""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.nats_silence import BOUND, LONGER, SHORTER, thaw_after
from tests.tools.page_recorders import RECORD_BANNER
from tests.ui_support import start_job

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings, own_nats: EmbeddedNats) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=TEST_TYPES, nats_url=own_nats.url, nats_silence_seconds=BOUND
    )


async def shown_done(page: Page, system: System) -> None:
    """A one-line job, shown completed in the recent jobs: brought by the all-jobs stream, which
    is then open and live, with no job card (no job stream) left on the page."""
    job_id = await start_job(system, "emit", lines=1)
    row = page.locator(f'tr[data-job-row][data-job-id="{job_id}"][data-status="completed"]')
    await expect(row).to_be_visible(timeout=30_000)
    await expect(page.locator("[data-job-card]")).to_have_count(0)


async def idle_jobs_page(page: Page, system: System) -> None:
    await page.goto("/jobs")
    await shown_done(page, system)
    await page.evaluate(RECORD_BANNER)


async def test_idle_jobs_page_shows_the_banner_while_nats_is_silent_past_the_bound(
    page: Page, system: System, own_nats: EmbeddedNats
) -> None:
    """NATS frozen past the bound: the banner shows while it lasts and goes after the thaw."""
    await idle_jobs_page(page, system)
    thaw_after(own_nats, LONGER)
    await page.wait_for_function("() => window.bannerShown", timeout=30_000)
    assert "Verbindung unterbrochen" in await page.evaluate("window.bannerText")
    await expect(page.locator("#conn-banner")).to_be_hidden(timeout=30_000)
    await shown_done(page, system)


async def test_idle_jobs_page_shows_no_banner_for_a_freeze_shorter_than_the_bound(
    page: Page, system: System, own_nats: EmbeddedNats
) -> None:
    """NATS frozen for less than the bound: no banner at any moment, and the list goes on."""
    await idle_jobs_page(page, system)
    thawed = asyncio.Event()
    thaw_after(own_nats, SHORTER)
    asyncio.get_running_loop().call_later(SHORTER, thawed.set)
    async with asyncio.timeout(30):
        await thawed.wait()
    # A job's end shown after the thaw: the stream went on, past any moment it could tell.
    await shown_done(page, system)
    assert await page.evaluate("window.bannerShown") is False
