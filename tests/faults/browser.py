"""The fault suite's browser fixtures: a headless Chromium of each test's own and a signed-in page
on the package's short-TTL cluster. Import them into a test module:
``from tests.faults.browser import chromium, cluster, page``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

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
    yield opened
    await opened.context.close()
