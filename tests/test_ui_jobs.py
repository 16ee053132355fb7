"""The /jobs screen in a real browser: start, watch, cancel, and the busy lock."""

from __future__ import annotations

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.ui_support import cancel_job, start_job, wait_for_status

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


async def open_dialog(page: Page) -> None:
    await page.goto("/jobs")
    await page.get_by_role("button", name="Neuer Job").click()
    await expect(page.get_by_role("dialog", name="Neuen Job starten")).to_be_visible()


async def test_job_started_from_dialog_shows_its_lines_live(page: Page, system: System) -> None:
    """A job started in the dialog appears on top and its log lines arrive while it runs."""
    await open_dialog(page)
    await page.get_by_label("lines", exact=True).fill("40")
    await page.get_by_label("interval", exact=True).fill("0.1")
    await page.get_by_role("button", name="Job starten").click()

    card = page.locator("[data-job-card]")
    terminal = card.locator("[data-terminal]")
    await expect(terminal).to_contain_text("INFO line 1 [1/40]")
    # The first lines are on the page while the job still runs.
    await expect(card).to_have_attribute("data-status", "running")
    await expect(card.locator("[data-progress-text]")).to_contain_text("/ 40")
    # Once finished it moves to the recent jobs, as completed.
    row = page.locator("#recent-table [data-job-row]").first
    await expect(row).to_have_attribute("data-status", "completed", timeout=30_000)
    await expect(row).to_contain_text("Erfolgreich")
    await expect(card).to_have_count(0)


async def test_parameter_error_is_shown_at_its_field(page: Page, system: System) -> None:
    """A value the API rejects is marked at its field with the API's reason."""
    await open_dialog(page)
    await page.get_by_label("interval", exact=True).fill("soon")
    await page.get_by_role("button", name="Job starten").click()

    error = page.locator("#param-interval-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("Passt nicht zum erwarteten Format: must match")
    field = page.get_by_label("interval", exact=True)
    await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(field).to_be_focused()
    await expect(page.get_by_role("dialog", name="Neuen Job starten")).to_be_visible()


async def test_busy_lock_names_the_job_holding_it(page: Page, system: System) -> None:
    """Starting a job whose lock is held says which job holds it."""
    # Two hundred seconds of lines, cancelled at the end: the holder must outlast the dialog's
    # steps on a loaded machine (twenty seconds did not always, in a CI run at load 20).
    holder = await start_job(system, "exclusive", lines=4000, interval="0.05")
    try:
        await wait_for_status(system, holder, {"running"})
        await open_dialog(page)
        await page.get_by_role("radio", name="Exclusive lines").check()
        await expect(page.locator('#job-params [data-job-type="exclusive"]')).to_be_attached()
        await page.get_by_role("button", name="Job starten").click()

        alert = page.locator("#new-job-alert")
        await expect(alert).to_be_visible()
        await expect(alert).to_contain_text("Es läuft bereits ein Job")
        await expect(alert).to_contain_text("Exclusive lines (exclusive, Läuft")
        await expect(alert.get_by_role("link")).to_have_attribute("href", f"/jobs/{holder}")
    finally:
        await cancel_job(system, holder)


async def test_running_job_is_cancelled_from_the_page(page: Page, system: System) -> None:
    """Cancel asks for confirmation, then the job ends as cancelled and moves to the history."""
    job_id = await start_job(system, "emit", lines=2000, interval="0.05")
    await wait_for_status(system, job_id, {"running"})
    await page.goto("/jobs")
    card = page.locator(f'[data-job-card][data-job-id="{job_id}"]')
    await expect(card.locator("[data-terminal]")).to_contain_text("line 1 [1/2000]")

    await card.get_by_role("button", name="Abbrechen").click()
    confirm = page.get_by_role("dialog", name="Job wirklich abbrechen?")
    await expect(confirm).to_be_visible()
    await confirm.get_by_role("button", name="Ja, abbrechen").click()

    row = page.locator(f'#recent-table [data-job-row][data-job-id="{job_id}"]')
    await expect(row).to_have_attribute("data-status", "cancelled", timeout=30_000)
    await expect(row).to_contain_text("Abgebrochen")
    await expect(card).to_have_count(0)
    assert (await wait_for_status(system, job_id, {"cancelled"}))["status"] == "cancelled"


async def test_new_job_dialog_works_from_the_keyboard_alone(page: Page, system: System) -> None:
    """Tab to the button, choose the type with arrows, fill the form, Enter starts the job."""
    await page.goto("/jobs")
    await page.wait_for_selector("html[data-ready]")
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "new-job-open":
            break
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Neuen Job starten")
    await expect(dialog).to_be_visible()
    await expect(page.get_by_role("radio", name="Emit lines")).to_be_focused()

    # Arrow keys move between the type cards; each brings its own form.
    await page.keyboard.press("ArrowDown")
    await expect(page.locator('#job-params [data-job-type="exclusive"]')).to_be_attached()
    await page.keyboard.press("ArrowUp")
    await expect(page.locator('#job-params [data-job-type="emit"]')).to_be_attached()

    # Focus stays inside the dialog however far one tabs.
    for _ in range(15):
        await page.keyboard.press("Tab")
        assert await page.evaluate("!!document.activeElement.closest('dialog[open]')")

    await page.get_by_role("radio", name="Emit lines").focus()  # back to a known place
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("lines", exact=True)).to_be_focused()
    await page.keyboard.press("Control+A")
    await page.keyboard.type("3")
    await page.keyboard.press("Enter")

    await expect(dialog).to_be_hidden()
    row = page.locator("#recent-table [data-job-row]").first
    await expect(row).to_have_attribute("data-status", "completed", timeout=30_000)
