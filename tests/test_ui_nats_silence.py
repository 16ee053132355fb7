"""The jobs page in a real browser while NATS is frozen (SIGSTOP of a real nats-server): past
``nats_silence_seconds`` it shows the connection banner, as when the API is away, and hides it
once NATS answers again; a shorter freeze shows nothing. Every line shows once either way.
(Before, a 30 s freeze showed no banner: the card stayed "Running" and the lines stopped.)"""

from __future__ import annotations

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.nats_silence import BOUND, LONGER, SHORTER, thaw_after
from tests.tools.page_recorders import RECORD_BANNER, RECORD_ROWS
from tests.ui_support import TERMINAL, start_job, wait_for_status

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings, own_nats: EmbeddedNats) -> Settings:
    return msgspec.structs.replace(
        settings, job_types_file=TEST_TYPES, nats_url=own_nats.url, nats_silence_seconds=BOUND
    )


async def watched_job(page: Page, system: System) -> str:
    """A job printing for twenty seconds, its card's lines recorded from its third one."""
    total = 200
    job_id = await start_job(system, "emit", lines=total, interval="0.1")
    await page.goto("/jobs")
    terminal = page.locator(f'[data-terminal][data-job-id="{job_id}"]')
    await expect(terminal).to_contain_text(f"line 3 [3/{total}]")
    await page.evaluate(RECORD_ROWS, job_id)
    await page.evaluate(RECORD_BANNER)
    return job_id


async def every_line_once(page: Page, system: System, job_id: str) -> None:
    """The job's end (LEASE_LOST is right after a long freeze) and every line it printed
    shown once, in order."""
    await wait_for_status(system, job_id, TERMINAL)
    async with system.client() as client:
        count = (await client.get(f"/api/jobs/{job_id}")).json()["log_count"]
    await page.wait_for_function(f"() => window.seenSeqs.includes({count})")
    assert await page.evaluate("window.seenSeqs") == list(range(1, count + 1))


async def test_banner_while_nats_is_silent_past_the_bound(
    page: Page, system: System, own_nats: EmbeddedNats
) -> None:
    """NATS frozen past the bound: the banner shows while it lasts and goes after the thaw."""
    job_id = await watched_job(page, system)
    thaw_after(own_nats, LONGER)
    await page.wait_for_function("() => window.bannerShown", timeout=30_000)
    assert "Verbindung unterbrochen" in await page.evaluate("window.bannerText")
    await expect(page.locator("#conn-banner")).to_be_hidden(timeout=30_000)
    await every_line_once(page, system, job_id)


async def test_no_banner_for_a_freeze_shorter_than_the_bound(
    page: Page, system: System, own_nats: EmbeddedNats
) -> None:
    """NATS frozen for less than the bound: no banner at any moment, the lines go on."""
    job_id = await watched_job(page, system)
    thaw_after(own_nats, SHORTER)
    await every_line_once(page, system, job_id)
    assert await page.evaluate("window.bannerShown") is False
