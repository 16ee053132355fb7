"""Accessibility in a real browser: text contrast, labelled status and progress, live regions."""

from __future__ import annotations

import re

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from tests.system import System
from tests.ui_support import TEST_TYPES, cancel_job, start_job, wait_for_status

pytestmark = pytest.mark.browser

# Every visible element with its own text: the WCAG contrast ratio of its colour against the
# background it is drawn on (colours resolved by a canvas, so any CSS colour space works).
LOW_CONTRAST = """() => {
  const ctx = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
  const rgba = (css) => {
    ctx.clearRect(0, 0, 1, 1);
    ctx.fillStyle = "#000";
    ctx.fillStyle = css;
    ctx.fillRect(0, 0, 1, 1);
    const [r, g, b, a] = ctx.getImageData(0, 0, 1, 1).data;
    return [r, g, b, a / 255];
  };
  const over = (top, under) => top.slice(0, 3).map((c, i) => c * top[3] + under[i] * (1 - top[3]));
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] === 1) break; }
    }
    return layers.reverse().reduce((under, top) => over(top, under), [255, 255, 255]);
  };
  const lum = (rgb) => {
    const [r, g, b] = rgb.map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const bad = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const unseen = "[hidden], dialog:not([open]), .sr-only, template";
    if (!own || !el.getClientRects().length || el.closest(unseen)) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden") continue;
    let opacity = 1;
    for (let e = el; e; e = e.parentElement) opacity *= Number(getComputedStyle(e).opacity);
    const bg = background(el);
    const fg = rgba(style.color);
    const text = over([...fg.slice(0, 3), fg[3] * opacity], bg);
    const [l1, l2] = [lum(text), lum(bg)].sort((a, b) => b - a);
    const ratio = (l1 + 0.05) / (l2 + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      bad.push(`${ratio.toFixed(2)} ${el.tagName}.${el.className} ${el.textContent.trim()}`);
    }
  }
  return bad;
}"""


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
    await expect(announcer).to_have_text("Job Emit lines beendet: Erfolgreich", timeout=30_000)
    # The terminal itself never speaks each line.
    await expect(page.locator("[data-terminal]")).to_have_count(0)
