"""The fault suite's browser fixtures: a headless Chromium of each test's own and a signed-in page
on the package's short-TTL cluster. Import them into a test module:
``from tests.faults.browser import chromium, cluster, page``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, Response, async_playwright

from tests.browser import launch, open_page
from tests.faults.cluster import FaultCluster


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        yield browser
        await browser.close()


@pytest.fixture
async def page(chromium: Browser, cluster: FaultCluster) -> AsyncIterator[Page]:
    system: Any = cluster  # open_page needs only base_url and settings
    opened = await open_page(chromium, system)
    seen = watch(opened)
    yield opened
    try:
        await opened.context.close()
    finally:
        # pytest shows a test's captured output only when it fails: there, what the page saw
        # (printed even when closing the page fails, which would otherwise lose it).
        print("What the page saw (seconds since it opened):", *seen, sep="\n  ")


def watch(page: Page) -> list[str]:
    """Record what ``page`` sees as it happens: its console, every response (each (re)connect of
    an SSE stream is one) and every request that failed, one line each."""
    seen: list[str] = []
    opened = time.monotonic()

    def note(text: str) -> None:
        seen.append(f"{time.monotonic() - opened:7.2f} {text}")

    def on_console(message: ConsoleMessage) -> None:
        note(f"console {message.type}: {message.text}")

    def on_response(response: Response) -> None:
        note(f"{response.status} {response.request.method} {response.url}")

    def on_request_failed(request: Request) -> None:
        note(f"failed {request.method} {request.url}: {request.failure}")

    page.on("console", on_console)
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    return seen
