"""Accessibility in a real browser: text contrast, labelled status and progress, live regions."""

from __future__ import annotations

import re

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.bidicontrols import isolated
from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.ui_support import LOW_CONTRAST, cancel_job, start_job, wait_for_status

pytestmark = pytest.mark.browser


# True once the open dialog's opening transitions have ended (spinners run forever: not those).
SETTLED = """() => document.getAnimations()
  .filter((a) => a.effect?.target?.closest?.("dialog[open]"))
  .filter((a) => a.effect.getTiming().iterations !== Infinity)
  .every((a) => a.playState === "finished")"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


async def test_text_contrast_passes_wcag_aa(page: Page, system: System) -> None:
    """Every text on the jobs screen, its dialog and a job's detail has AA contrast."""
    for exit_code in (0, 1):
        done = await start_job(system, "emit", lines=3, exit_code=exit_code)
        await wait_for_status(system, done, {"completed", "failed"})
    running = await start_job(system, "emit", lines=500, interval="0.2", stderr_every=3)
    try:
        await page.goto("/jobs")
        await expect(page.locator("[data-terminal] .log-row").nth(3)).to_be_attached()
        assert await page.evaluate(LOW_CONTRAST) == []
        await page.get_by_role("button", name="Neuer Job").click()
        await page.wait_for_function(SETTLED)
        assert await page.evaluate(LOW_CONTRAST) == []
        await page.keyboard.press("Escape")
        await page.goto(f"/jobs/{done}")
        await expect(page.locator("#log-viewport .log-row").first).to_be_visible()
        assert await page.evaluate(LOW_CONTRAST) == []
    finally:
        await cancel_job(system, running)


async def test_status_and_progress_have_spoken_labels(page: Page, system: System) -> None:
    """Status and progress read as "Status: Läuft, 42 %"; a finish is announced politely."""
    job_id = await start_job(system, "emit", lines=50, interval="0.1")
    await page.goto("/jobs")
    card = page.locator(f'[data-job-card][data-job-id="{job_id}"]')
    await expect(card.get_by_role("img", name="Status: Läuft")).to_be_visible()
    bar = card.get_by_role("progressbar")
    await expect(bar).to_have_attribute("aria-label", re.compile(r"^Status: Läuft, \d+ %$"))
    announcer = page.locator("#announcer")
    await expect(announcer).to_have_attribute("aria-live", "polite")
    await expect(announcer).to_have_text(
        f"Job {isolated('Emit lines')} beendet: Erfolgreich", timeout=30_000
    )
    # The terminal itself never speaks each line.
    await expect(page.locator("[data-terminal]")).to_have_count(0)
