"""Screenshots of every web UI screen for the README (docs/screenshots/*.png).

Starts its own NATS, Postgres and jobrunner (as the tests do), runs the bundled demo job types,
and photographs the screens in headless Chromium:

    .venv/bin/python scripts/screenshots.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.async_api import Page, async_playwright, expect  # noqa: E402

from jobrunner.common.settings import Settings  # noqa: E402
from tests.browser import launch, open_page  # noqa: E402
from tests.servers import PostgresCluster, nats_url, postgres_cluster  # noqa: E402
from tests.system import System  # noqa: E402
from tests.ui_support import start_job, wait_for_status  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


async def shoot(page: Page, name: str, **options: Any) -> None:
    await page.wait_for_timeout(400)  # let transitions settle for the picture
    await page.screenshot(path=str(OUT / f"{name}.png"), **options)
    print("wrote", OUT / f"{name}.png")


async def main(nats: str, pg: PostgresCluster) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        nats_url=nats,
        database_url=await pg.fresh_database(),
        prefix=f"shots{uuid.uuid4().hex[:6]}",
        state_dir=tempfile.mkdtemp(),
        demo_pace=0.05,
        log_format="console",
        log_level="warning",
    )
    system = System(settings)
    await system.start()
    try:
        # A little history: one success, one failure (PLZ 0: DATEV unreachable), one cancel.
        done = await start_job(system, "scraper", plz_filter="4")
        await wait_for_status(system, done, {"completed", "failed"})
        failed = await start_job(system, "enrich_email", plz_filter="0")
        await wait_for_status(system, failed, {"completed", "failed"})
        cancelled = await start_job(system, "blacklist_sync")
        async with system.client() as client:
            await client.delete(f"/api/jobs/{cancelled}")
        await wait_for_status(system, cancelled, {"completed", "failed", "cancelled"})
        finished = await start_job(
            system, "enrich_search", plz_filter="4", confidence_filter=["none", "low"]
        )
        await wait_for_status(system, finished, {"completed", "failed"})

        async with async_playwright() as playwright:
            browser = await launch(playwright)
            page = await open_page(browser, system)

            await page.goto(f"/jobs/{finished}")
            await expect(page.locator("#log-viewport .log-row").first).to_be_visible()
            await shoot(page, "job-detail")

            # The running job, slowed down so it is caught in the middle.
            await system.stop_service("runner")
            await system.start_runner(demo_pace=0.6)
            running = await start_job(
                system, "enrich_search", plz_filter="4", confidence_filter=["none", "low"]
            )
            await page.goto("/jobs")
            card = page.locator(f'[data-job-card][data-job-id="{running}"]')
            await expect(card.locator("[data-progress-text]")).to_contain_text("/", timeout=30_000)
            await expect(card.locator(".log-row").nth(7)).to_be_attached(timeout=30_000)
            await shoot(page, "jobs", full_page=True)

            await page.get_by_role("button", name="Neuer Job").click()
            await page.get_by_role("radio", name="Phase 2: Websuche Enrichment").check()
            await expect(page.locator('[data-job-type="enrich_search"]')).to_be_attached()
            await page.get_by_role("button", name="Job starten").click()
            await expect(page.locator("#new-job-alert")).to_be_visible()
            await shoot(page, "new-job-busy")
            await page.keyboard.press("Escape")

            await page.get_by_role("button", name="Verarbeitung").click()
            await expect(page.locator("#panel-list > li")).to_have_count(5)
            await shoot(page, "side-panel")
            await page.keyboard.press("Escape")

            english = await open_page(browser, system, locale="en-GB")
            await english.goto("/jobs?lang=en")
            await english.get_by_role("button", name="New job").click()
            await english.get_by_role("radio", name="Phase 2: Websuche Enrichment").check()
            await expect(english.locator('[data-job-type="enrich_search"]')).to_be_attached()
            await english.get_by_label("PLZ-Filter").fill("4x")
            await english.get_by_role("button", name="Start job").click()
            await expect(english.locator("#param-plz_filter-error")).to_be_visible()
            await shoot(english, "new-job-en")

            async with system.client() as client:
                await client.delete(f"/api/jobs/{running}")
            await browser.close()
    finally:
        await system.stop()


if __name__ == "__main__":
    with nats_url() as url, postgres_cluster() as cluster:
        asyncio.run(main(url, cluster))
