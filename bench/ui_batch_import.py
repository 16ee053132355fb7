"""How fast "Neuer Batch" imports a CSV of parameter rows and starts it, in headless Chromium.

    .venv/bin/python -m bench.ui_batch_import [--rows 10000] [--runs 3]

Starts its own NATS, Postgres and jobrunner (as the tests do, no runner: the jobs stay pending),
then measures in the browser, on /batches:

* import: choosing the file -> every row parsed, checked against the type's schema and listed;
* start: "Batch starten" -> the batch's page shows its total (POST /api/batches answered 201,
  the page loaded, GET /api/batches/{id} read the first page of jobs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.async_api import Page, async_playwright, expect  # noqa: E402
from playwright.async_api import TimeoutError as PlaywrightTimeout  # noqa: E402

from jobrunner.common.settings import Settings  # noqa: E402
from tests.browser import launch, open_page  # noqa: E402
from tests.servers import PostgresCluster, nats_url, postgres_cluster  # noqa: E402
from tests.system import System  # noqa: E402
from tests.ui_support import TEST_TYPES  # noqa: E402


async def measure(page: Page, csv_file: Path, rows: int) -> dict[str, float]:
    await page.goto("/batches")
    await page.wait_for_selector("html[data-ready]")
    await page.get_by_role("button", name="Neuer Batch").click()
    await expect(page.locator('#batch-job-params [data-job-type="emit"]')).to_be_attached()
    await page.get_by_label("Name des Batches").fill(f"bench {uuid.uuid4().hex[:6]}")
    started = time.perf_counter()
    await page.get_by_label("Datei importieren (CSV oder JSON)").set_input_files(str(csv_file))
    await page.wait_for_function(
        "(n) => document.getElementById('batch-list-count').textContent === n",
        arg=f"{rows:,}".replace(",", "."),
        polling="raf",
    )
    imported = time.perf_counter() - started
    started = time.perf_counter()
    await page.get_by_role("button", name="Batch starten").click()
    try:
        await page.wait_for_url("**/batches/*", timeout=300_000)
    except PlaywrightTimeout:
        alert = await page.locator("#new-batch-alert").text_content()
        raise SystemExit(f"no batch page within 300 s; the dialog says: {alert!r}") from None
    await page.wait_for_function(
        "(n) => (document.querySelector('[data-field=ended]')?.textContent ?? '').includes(n)",
        arg=f"{rows:,}".replace(",", "."),
        polling="raf",
    )
    return {"import": imported * 1000, "start": (time.perf_counter() - started) * 1000}


async def main(nats: str, pg: PostgresCluster, rows: int, runs: int) -> None:
    settings = Settings(
        nats_url=nats,
        database_url=await pg.fresh_database(),
        prefix=f"bench{uuid.uuid4().hex[:6]}",
        state_dir=tempfile.mkdtemp(),
        job_types_file=TEST_TYPES,
        log_format="console",
        log_level="warning",
    )
    csv_file = Path(tempfile.mkdtemp()) / "rows.csv"
    csv_file.write_text(
        "lines;interval;exit_code\n" + "".join(f"{i % 50};0.{i % 10};0\n" for i in range(rows))
    )
    system = System(settings)
    await system.start_projector()
    await system.start_api()
    try:
        async with async_playwright() as playwright:
            browser = await launch(playwright)
            page = await open_page(browser, system)
            page.set_default_timeout(300_000)
            results = [await measure(page, csv_file, rows) for _ in range(runs)]
            await browser.close()
    finally:
        await system.stop()
    for key, label in (("import", "import and check"), ("start", "start to batch page")):
        values = [r[key] for r in results]
        print(
            f"{label:22} {rows:,} rows: median {statistics.median(values):7.0f} ms"
            f"   min {min(values):6.0f}   max {max(values):6.0f}   ({runs} runs)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with nats_url() as url, postgres_cluster() as cluster:
        asyncio.run(main(url, cluster, args.rows, args.runs))
