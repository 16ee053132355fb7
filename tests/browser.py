"""A real headless Chromium (Debian's package) driven by Playwright, for the web UI's tests.

Import the fixtures into a test module: ``from tests.browser import browser, page``.
Never ``playwright install``: the browser is the machine's ``/usr/bin/chromium``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.system import System

CHROMIUM = os.environ.get("JOBRUNNER_TEST_CHROMIUM", "/usr/bin/chromium")
# Two shared cores and other suites running beside: conditions get time, never a fixed sleep.
expect.set_options(timeout=15_000)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]


async def launch(playwright: Any) -> Browser:
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await launch(playwright)
        yield chromium
        await chromium.close()


async def open_page(browser: Browser, system: System, locale: str = "de-DE") -> Page:
    """A fresh signed-in browser context on the system; the page records script errors."""
    context = await browser.new_context(
        base_url=system.base_url,
        locale=locale,
        timezone_id="Europe/Berlin",
        viewport={"width": 1280, "height": 900},
        accept_downloads=True,
    )
    if getattr(system.settings, "auth", False) and hasattr(system, "sign_in"):
        await system.sign_in(context)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    # A Content-Security-Policy violation would mean inline code or styles crept in.
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.script_errors = errors  # type: ignore[attr-defined]
    return page


@pytest.fixture
async def page(browser: Browser, system: System) -> AsyncIterator[Page]:
    opened = await open_page(browser, system)
    yield opened
    errors = opened.script_errors  # type: ignore[attr-defined]
    await opened.context.close()
    assert not errors, errors
