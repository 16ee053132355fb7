"""How fast the job detail view opens a 1,000,000-line log, in headless Chromium.

    .venv/bin/python -m bench.ui_detail [--lines 1000000] [--runs 5]

Starts its own NATS, Postgres and jobrunner (as the tests do), runs one job printing ``--lines``
lines, waits until every line is in the read model, then measures in the browser:

* first screen: navigation start -> the first log row is painted with its text;
* jump to the end: click "Zum Ende" -> the last line is on screen;
* random jumps: the scrollbar set to a random place -> the rows there are on screen;
* rows in the page: how many log rows exist in the DOM (the list is virtual).
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

from playwright.async_api import Page, async_playwright  # noqa: E402

from jobrunner.common.settings import Settings  # noqa: E402
from tests.browser import launch, open_page  # noqa: E402
from tests.servers import PostgresCluster, nats_url, postgres_cluster  # noqa: E402
from tests.system import System  # noqa: E402
from tests.ui_support import TEST_TYPES, start_job  # noqa: E402

# Resolves once a row showing ``needle`` is in the viewport; answers the time it took (ms).
WAIT_FOR_ROW = """async ([needle, since]) => {
  const view = document.getElementById("log-viewport");
  const found = () => [...view.querySelectorAll("[data-rows] .log-row")]
    .some((row) => row.textContent.includes(needle));
  while (!found()) await new Promise(requestAnimationFrame);
  return performance.now() - (since ?? 0);
}"""


async def load_job(system: System, lines: int) -> str:
    job_id = await start_job(system, "emit", lines=lines)
    started = time.monotonic()
    async with system.client() as client:
        while True:
            job = (await client.get(f"/api/jobs/{job_id}")).json()
            if job["status"] in ("completed", "failed") and job["log_count"] >= lines:
                break
            await asyncio.sleep(0.5)
    print(f"job with {lines:,} lines stored in {time.monotonic() - started:.1f} s")
    return job_id


async def measure(page: Page, job_id: str, lines: int) -> dict[str, float]:
    await page.goto("about:blank")
    await page.goto(f"/jobs/{job_id}", wait_until="commit")
    # performance.now() counts from the navigation's start.
    first = await page.evaluate(WAIT_FOR_ROW, [f"line 1 [1/{lines}]", 0])
    since = await page.evaluate("performance.now()")
    await page.get_by_role("button", name="Zum Ende").click()
    end = await page.evaluate(WAIT_FOR_ROW, [f"line {lines} [{lines}/{lines}]", since])
    jumps = []
    for fraction in (0.13, 0.71, 0.42, 0.97, 0.05):
        since = await page.evaluate(
            """(f) => {
              const v = document.getElementById("log-viewport");
              v.scrollTop = f * (v.scrollHeight - v.clientHeight);
              return performance.now();
            }""",
            fraction,
        )
        seq = await page.evaluate(
            """() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() =>
                r(Math.floor(window.logView.topIndex()) + 2))))"""
        )
        jumps.append(await page.evaluate(WAIT_FOR_ROW, [f"line {seq} [{seq}/{lines}]", since]))
    rows = await page.locator("#log-viewport .log-row").count()
    return {"first": first, "end": end, "jump": statistics.median(jumps), "rows": rows}


async def main(nats: str, pg: PostgresCluster, lines: int, runs: int) -> None:
    settings = Settings(
        nats_url=nats,
        database_url=await pg.fresh_database(),
        prefix=f"bench{uuid.uuid4().hex[:6]}",
        state_dir=tempfile.mkdtemp(),
        job_types_file=TEST_TYPES,
        log_format="console",
        log_level="warning",
    )
    system = System(settings)
    await system.start()
    try:
        job_id = await load_job(system, lines)
        async with async_playwright() as playwright:
            browser = await launch(playwright)
            page = await open_page(browser, system)
            results = [await measure(page, job_id, lines) for _ in range(runs)]
            await browser.close()
    finally:
        await system.stop()
    for key, label in (
        ("first", "first screen"),
        ("end", "jump to the end"),
        ("jump", "random jump (median of 5)"),
    ):
        values = [r[key] for r in results]
        print(
            f"{label:28} median {statistics.median(values):7.0f} ms"
            f"   min {min(values):6.0f}   max {max(values):6.0f}   ({runs} runs)"
        )
    print(f"{'log rows in the page':28} {max(r['rows'] for r in results):7.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with nats_url() as url, postgres_cluster() as cluster:
        asyncio.run(main(url, cluster, args.lines, args.runs))
