"""An address with nothing at it, in a signed-in browser: a page saying so, not raw JSON."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from tests.browser import browser, page  # noqa: F401  (fixtures)
from tests.system import System

pytestmark = pytest.mark.browser


@pytest.mark.parametrize(
    ("path", "sentence", "back", "back_href"),
    [
        ("/jobs/doesnotexist", "Diesen Job gibt es nicht.", "Zurück zu den Jobs", "/jobs"),
        ("/batches/nope", "Diesen Batch gibt es nicht.", "Zurück zu den Batches", "/batches"),
        ("/nope", "Unter dieser Adresse gibt es nichts.", "Zurück zu den Jobs", "/jobs"),
    ],
)
async def test_a_missing_page_says_what_was_not_found_with_a_way_back(
    page: Page,  # noqa: F811
    path: str,
    sentence: str,
    back: str,
    back_href: str,
) -> None:
    """A German browser sees "Nicht gefunden", the sentence and a link back, with status 404."""
    response = await page.goto(path)
    assert response is not None
    assert response.status == 404
    assert response.headers["content-type"].startswith("text/html")
    await expect(page.locator("html")).to_have_attribute("lang", "de")
    await expect(page.get_by_role("heading", name="Nicht gefunden")).to_be_visible()
    await expect(page.get_by_text(sentence)).to_be_visible()
    await page.get_by_role("link", name=back).click()
    await expect(page).to_have_url(re.compile(re.escape(back_href) + "$"))


async def test_api_clients_keep_the_json_error(system: System) -> None:
    """/api answers JSON even to a browser's Accept; elsewhere a client asking */* gets JSON."""
    browser_accept = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    async with system.client() as client:
        api = await client.get("/api/jobs/doesnotexist", headers=browser_accept)
        page_as_json = await client.get("/jobs/doesnotexist", headers={"Accept": "*/*"})
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "JOB_NOT_FOUND"
    assert page_as_json.status_code == 404
    assert page_as_json.json()["error"]["code"] == "JOB_NOT_FOUND"
