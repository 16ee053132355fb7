"""Tool output in a real browser: markup stays text, ANSI colours become classes."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from tests.system import System
from tests.ui_support import start_job, wait_for_status

pytestmark = pytest.mark.browser

HOSTILE_OUTPUT = (
    "print('INFO <img src=x onerror=\"window.pwned=1\"><b>bold?</b>'); "
    "print('WARNING \\x1b[31mred\\x1b[0m plain \\x1b[1;32mgreen\\x1b[0m \\x1b[2Jcleared?')"
)


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    types = tmp_path / "jobtypes.toml"
    types.write_text(
        "[job_types.markup]\n"
        'title = "Markup"\n'
        f"argv = {json.dumps(['{python}', '-c', HOSTILE_OUTPUT])}\n"
    )
    return msgspec.structs.replace(settings, job_types_file=str(types))


async def test_markup_in_tool_output_is_shown_as_text(page: Page, system: System) -> None:
    """Markup in a log line is shown literally and never runs; escape codes never show."""
    job_id = await start_job(system, "markup")
    await wait_for_status(system, job_id, {"completed"})
    await page.goto(f"/jobs/{job_id}")
    viewport = page.locator("#log-viewport")
    await expect(viewport).to_contain_text('<img src=x onerror="window.pwned=1"><b>bold?</b>')
    assert await viewport.locator("img, b").count() == 0
    assert await page.evaluate("window.pwned") is None
    await expect(viewport.locator(".log-row").nth(1)).to_contain_text("red plain green cleared?")


async def test_ansi_colours_become_classes_around_plain_text(page: Page, system: System) -> None:
    """The terminal's renderer turns SGR colours into classes and everything else into text."""
    await page.goto("/jobs")
    html = await page.evaluate(
        """async () => {
          const { renderAnsi } = await import("/static/js/ansi.js");
          const el = document.createElement("div");
          renderAnsi(el, "\\x1b[31mred <b>x</b>\\x1b[0m \\x1b[1;92mgreen\\x1b[0m\\x1b[2K done");
          return el.innerHTML;
        }"""
    )
    assert html == (
        '<span class="ansi-fg-1">red &lt;b&gt;x&lt;/b&gt;</span> '
        '<span class="ansi-fg-2 ansi-bold">green</span> done'
    )
