"""The API SIGKILLed while a browser acts on selected jobs (/jobs multi-select): the confirmation
says the connection is lost instead of hanging or claiming success, keeps the selection, and the
same confirmation after the restart cancels every selected job, each tool stopped."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from tests.faults.browser import chromium, cluster, page  # noqa: F401  (fixtures)
from tests.faults.cluster import FaultCluster
from tests.faults.invariants import alive_problems, outcome

pytestmark = pytest.mark.browser


async def test_selection_cancel_survives_an_api_kill(
    cluster: FaultCluster,  # noqa: F811
    page: Page,  # noqa: F811
) -> None:
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
