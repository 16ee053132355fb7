"""The job page's artifacts in a real browser: listed with sizes, downloadable, zipped, live."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.bidicontrols import isolated
from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import ARTIFACT_TYPES
from tests.ui_support import start_job, wait_for_status

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=ARTIFACT_TYPES)


async def test_finished_job_lists_its_artifacts_with_sizes(page: Page, system: System) -> None:
    """The page lists each file with its size and offers the ZIP of all (German)."""
    job_id = await start_job(system, "artifacts", mode="several")
    await wait_for_status(system, job_id, {"completed"})
    await page.goto(f"/jobs/{job_id}")

    section = page.locator("#artifacts")
    await expect(section.get_by_role("heading", name="Artefakte")).to_be_visible()
    await expect(section.locator("[data-artifact-count]")).to_have_text("5")
    row = section.locator("tr", has_text="data.bin")
    await expect(row).to_contain_text("293,0 KiB")
    await expect(section.get_by_role("link", name="Alle als ZIP herunterladen")).to_be_visible()


async def test_artifact_link_downloads_the_file(page: Page, system: System) -> None:
    """Clicking a file downloads it under its own name (English page)."""
    job_id = await start_job(system, "artifacts", mode="several")
    await wait_for_status(system, job_id, {"completed"})
    await page.goto(f"/jobs/{job_id}?lang=en")

    section = page.locator("#artifacts")
    await expect(section.get_by_role("link", name="Download all as ZIP")).to_be_visible()
    async with page.expect_download() as info:
        await section.get_by_role("link", name=f"Download {isolated('summary.txt')}").click()
    download = await info.value
    assert download.suggested_filename == "summary.txt"
    assert Path(await download.path()).read_bytes() == b"3 pages read\n"


async def test_an_html_artifact_is_downloaded_not_shown(page: Page, system: System) -> None:
    """A page a job left (served as text/html) is downloaded when clicked, and when its address
    is opened directly (a link shared, no download attribute): its script never runs."""
    job_id = await start_job(system, "artifacts", mode="page")
    await wait_for_status(system, job_id, {"completed"})
    await page.goto(f"/jobs/{job_id}?lang=en")
    link = page.locator("#artifacts").get_by_role("link", name=f"Download {isolated('page.html')}")
    async with page.expect_download() as clicked:
        await link.click()
    download = await clicked.value
    assert download.suggested_filename == "page.html"
    assert b"<script>" in Path(await download.path()).read_bytes()
    address = await link.get_attribute("href")
    assert address
    async with page.expect_download() as opened:
        await page.evaluate("address => { window.location.href = address }", address)
    assert (await opened.value).suggested_filename == "page.html"
    assert await page.title() != "ran"


async def test_artifacts_appear_when_a_live_job_ends(page: Page, system: System) -> None:
    """Watching a running job, its files show up once it ends, without a reload."""
    job_id = await start_job(system, "artifacts", mode="several", seconds="2")
    await wait_for_status(system, job_id, {"running"})
    await page.goto(f"/jobs/{job_id}")

    section = page.locator("#artifacts")
    await expect(section.locator("[data-artifacts-empty]")).to_contain_text("sobald er endet")
    await expect(section.locator("[data-artifact-count]")).to_have_text("5", timeout=30_000)
    await expect(
        section.get_by_role("link", name=f"{isolated('summary.txt')} herunterladen")
    ).to_be_visible()


async def test_job_without_artifacts_says_so(page: Page, system: System) -> None:
    """A finished job that left no files says 'No artifacts' and offers no ZIP."""
    job_id = await start_job(system, "artifacts", mode="sized", sizes="")
    await wait_for_status(system, job_id, {"completed"})
    await page.goto(f"/jobs/{job_id}?lang=en")

    section = page.locator("#artifacts")
    await expect(section.locator("[data-artifacts-empty]")).to_have_text("No artifacts.")
    await expect(section.locator("[data-archive]")).to_be_hidden()
