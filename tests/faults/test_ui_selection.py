"""The API SIGKILLed while a browser acts on selected jobs (/jobs multi-select): the confirmation
says the connection is lost instead of hanging or claiming success, keeps the selection, and the
same confirmation after the restart cancels every selected job, each tool stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.browser import launch, open_page
from tests.faults.cluster import FaultCluster
from tests.faults.invariants import alive_problems, outcome

pytestmark = pytest.mark.browser


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        yield browser
        await browser.close()


@pytest.fixture
async def page(chromium: Browser, cluster: FaultCluster) -> AsyncIterator[Page]:
    system: Any = cluster  # open_page needs only base_url and settings
    opened = await open_page(chromium, system)
    yield opened
    await opened.context.close()


async def test_selection_cancel_survives_an_api_kill(cluster: FaultCluster, page: Page) -> None:
    """API killed: the dialog says so and stays; after the restart both jobs end cancelled."""
    jobs = [await cluster.submit("free", lines=100_000, interval=0.05) for _ in range(2)]
    try:
        for job in jobs:
            assert await cluster.wait_stored(job.id, 1, 60) >= 1
        await page.goto("/jobs")
        for job in jobs:
            await page.locator(f'input[data-select="{job.id}"]').check()
        await expect(page.locator("#selection-count")).to_have_text("2 ausgewählt")

        cluster.services["api"].kill()
        await page.locator('[data-selection-action="cancel"]').click()
        dialog = page.get_by_role("dialog", name="2 Jobs abbrechen?")
        await dialog.get_by_role("button", name="Ja, ausführen").click()
        await expect(dialog.get_by_role("alert")).to_contain_text("Verbindung unterbrochen")
        await expect(dialog).to_be_visible()
        for job in jobs:
            row = await cluster.job(job.id)
            assert row is not None
            assert row.status == "running", outcome(row)

        await cluster.start_service("api")
        await dialog.get_by_role("button", name="Ja, ausführen").click()
        await expect(dialog).to_be_hidden(timeout=30_000)
        await expect(page.locator("#selection-result")).to_have_text("2 erledigt, 0 nicht möglich")
        for job in jobs:
            row = await cluster.wait_job(job.id, lambda r: r.status == "cancelled", 60)
            assert row is not None
            assert row.status == "cancelled", outcome(row)
        assert await alive_problems(jobs) == []
    finally:
        for job in jobs:
            await cluster.cancel(job.id)
