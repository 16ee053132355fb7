"""A page's address passed on by mail or chat, which often comes back with parameters of its own
(utm_source, fbclid): the page opens, not the API's 400 as raw JSON."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from tests.browser import browser, page  # noqa: F401  (fixtures)
from tests.system import System
from tests.tools.runners import start_job, wait_status

pytestmark = pytest.mark.browser

TRACKING = "utm_source=newsletter&utm_medium=email&fbclid=IwAR0abc"


async def test_a_shared_job_link_with_tracking_parameters_opens_the_job(
    page: Page,  # noqa: F811
    system: System,
) -> None:
    """The job's page, and the jobs list open with a link's added parameters; the
    parameters a page takes still count (lang=en shows it in English)."""
    async with system.client() as client:
        job_id = await start_job(client, "scraper", plz_filter="4")
        await wait_status(client, job_id, "completed", "failed")
    job = await page.goto(f"/jobs/{job_id}?{TRACKING}&lang=en")
    assert job is not None
    assert job.status == 200, await job.text()
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.get_by_text(job_id).first).to_be_visible()
    for path in ("/jobs",):  # /batches refuses what it does not take (its filters)
        listing = await page.goto(f"{path}?{TRACKING}")
        assert listing is not None
        assert listing.status == 200, await listing.text()


async def test_the_api_still_refuses_a_parameter_it_does_not_take(system: System) -> None:
    """Only the pages are lenient: a typo in an API filter must not widen its result."""
    async with system.client() as client:
        response = await client.get(f"/api/jobs?{TRACKING}")
        fragment = await client.get("/ui/recent?utm_source=x")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "UNKNOWN_QUERY_PARAMETER"
    assert fragment.status_code == 400
