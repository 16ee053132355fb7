"""An external job started from the New job dialog: its worker's address and token are shown once,
in the dialog, and work for reporting; closing the dialog forgets them."""

from __future__ import annotations

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from tests.external_support import EXTERNAL_TYPES, ExternalJob, worker_client
from tests.system import System

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=EXTERNAL_TYPES)


async def test_dialog_shows_an_external_jobs_token_once_and_it_works(
    page: Page, system: System
) -> None:
    """Starting an external job keeps the dialog open with its callback address and token."""
    await page.goto("/jobs")
    await page.get_by_role("button", name="Neuer Job").click()
    dialog = page.get_by_role("dialog", name="Neuen Job starten")
    await dialog.get_by_text("Document conversion (done by a worker elsewhere)", exact=True).click()
    await dialog.get_by_role("button", name="Job starten").click()

    section = dialog.locator("#new-job-callback")
    await expect(section).to_be_visible()
    await expect(section.get_by_role("heading")).to_have_text("Externer Job gestartet")
    token = await section.locator("[data-callback-token]").input_value()
    url = await section.locator("[data-callback-url]").input_value()
    assert len(token) >= 40
    assert url.startswith(system.base_url + "/api/external/jobs/")
    await expect(section.locator("[data-callback-token]")).to_be_focused()

    job = ExternalJob({"id": url.rsplit("/", 1)[1], "callback_token": token, "callback_url": url})
    async with worker_client(system.base_url) as worker:
        answer = await job.report_when_held(worker, result={"pages": 1})
    assert answer.status_code == 200, answer.text

    await section.get_by_role("button", name="Schließen").click()
    await expect(dialog).to_be_hidden()
    assert await page.locator("[data-callback-token]").input_value() == ""
    # Opened again, the dialog is the form, not the last token.
    await page.get_by_role("button", name="Neuer Job").click()
    await expect(dialog.locator("#new-job-form")).to_be_visible()
    await expect(section).to_be_hidden()
