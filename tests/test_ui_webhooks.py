"""The job detail page's webhook log (seed 001's "letzte Webhook-Logs") in a real browser."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from tests.system import System
from tests.webhook_receiver import running_receiver
from tests.webhook_support import settled, start_job, webhook_log, webhook_settings

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return webhook_settings(settings)


@pytest.mark.parametrize(
    ("lang", "title", "delivered"),
    [("de", "Letzte Webhook-Logs", "zugestellt"), ("en", "Latest webhook logs", "delivered")],
)
async def test_job_page_shows_each_webhook_attempt(
    page: Page, system: System, lang: str, title: str, delivered: str
) -> None:
    """A webhook answered 503 then 200: the page lists both attempts with code and error."""
    await system.start_notifier()
    async with running_receiver() as receiver:
        receiver.answer = lambda n: 503 if n == 1 else 200
        job_id = await start_job(system, {"url": receiver.url})
        await webhook_log(system, job_id, settled)
    await page.goto(f"/jobs/{job_id}?lang={lang}")
    section = page.locator("#webhooks")
    await expect(section.get_by_role("heading", name=title)).to_be_visible()
    await expect(section.locator("[data-delivery]")).to_have_attribute("data-state", "delivered")
    await expect(section.locator("[data-delivery] .badge").first).to_have_text(delivered)
    rows = section.locator("tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("503")
    await expect(rows.nth(0)).to_contain_text("WEBHOOK_HTTP_ERROR")
    await expect(rows.nth(1)).to_contain_text("200")
    await expect(section).to_contain_text(receiver.url)


async def test_job_page_without_webhooks_shows_no_webhook_log(page: Page, system: System) -> None:
    """A job that names no webhook: no webhook section on its page."""
    job_id = await start_job(system, None)
    await page.goto(f"/jobs/{job_id}")
    await expect(page.locator("#job-detail")).to_be_visible()
    await expect(page.locator("#webhooks")).to_have_count(0)
