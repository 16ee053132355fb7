"""The job detail screen in a real browser: facts, the whole log, search and download."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.ui_support import start_job, wait_for_status

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


async def finished_job(system: System, lines: int, exit_code: int = 0) -> str:
    job_id = await start_job(system, "emit", lines=lines, exit_code=exit_code)
    await wait_for_status(system, job_id, {"completed", "failed"})
    return job_id


async def test_finished_job_shows_its_facts_and_log(page: Page, system: System) -> None:
    """A failed job's detail shows status, exit code, error code and its first lines."""
    job_id = await finished_job(system, lines=50, exit_code=3)
    await page.goto(f"/jobs/{job_id}")

    detail = page.locator("#job-detail")
    await expect(detail.get_by_role("img", name="Status: Fehlgeschlagen")).to_be_visible()
    await expect(detail.locator('[data-field="exit_code"]')).to_have_text("3")
    await expect(detail.locator('[data-field="error"]')).to_contain_text("EXIT_NONZERO")
    await expect(detail.locator("[data-line-count]")).to_have_text("50")
    rows = page.locator("#log-viewport [data-rows] .log-row")
    await expect(rows.first).to_contain_text("INFO line 1 [1/50]")


async def test_log_jumps_to_the_end_and_finds_a_line(page: Page, system: System) -> None:
    """Jumping to the end shows the last line; a search scrolls to its match and marks it."""
    job_id = await finished_job(system, lines=3000)
    await page.goto(f"/jobs/{job_id}")
    viewport = page.locator("#log-viewport")
    await expect(viewport).to_contain_text("line 1 [1/3000]")
    # Only the rows in view are in the page, never the whole log.
    assert await viewport.locator(".log-row").count() < 100

    await page.get_by_role("button", name="Zum Ende").click()
    await expect(viewport).to_contain_text("line 3000 [3000/3000]")

    await page.get_by_role("searchbox", name="Im Log suchen").fill("line 1234 ")
    await page.get_by_role("button", name="Suchen", exact=True).click()
    await expect(page.locator("[data-hit-status]")).to_have_text("1 / 1 Treffer")
    await expect(viewport.locator(".log-row.hit")).to_contain_text("line 1234 [1234/3000]")


async def test_log_download_has_every_line(page: Page, system: System, tmp_path: Path) -> None:
    """The download button saves the whole log as a text file."""
    job_id = await finished_job(system, lines=120)
    await page.goto(f"/jobs/{job_id}")
    async with page.expect_download() as info:
        await page.get_by_role("link", name="Log herunterladen").click()
    download = await info.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    lines = saved.read_text().splitlines()
    assert len(lines) == 120
    assert lines[0].endswith("INFO line 1 [1/120]")
    assert lines[-1].endswith("INFO line 120 [120/120]")


async def test_running_job_detail_follows_it_live(page: Page, system: System) -> None:
    """A running job's detail shows new lines as they come and switches to its final status."""
    job_id = await start_job(system, "emit", lines=60, interval="0.1")
    await wait_for_status(system, job_id, {"running"})
    await page.goto(f"/jobs/{job_id}")
    detail = page.locator("#job-detail")
    await expect(detail.get_by_role("img", name="Status: Läuft")).to_be_visible()
    viewport = page.locator("#log-viewport")
    # Following the end: the last line arrives on screen as the job prints it.
    await expect(viewport).to_contain_text("line 60 [60/60]", timeout=30_000)
    await expect(detail.get_by_role("img", name="Status: Erfolgreich")).to_be_visible()
    await expect(detail.locator('[data-field="exit_code"]')).to_have_text("0")
    await expect(detail.locator("[data-line-count]")).to_have_text("60")
