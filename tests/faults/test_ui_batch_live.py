"""The API SIGKILLed while a browser shows a batch (/batches/{id}) whose jobs finish during the
outage: once the API is back, the page catches up by itself (no reload) and its counters equal
the jobs' real states in the read model."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from tests.faults.browser import chromium, cluster, page  # noqa: F401  (fixtures)
from tests.faults.cluster import FaultCluster, is_terminal
from tests.faults.invariants import outcome

pytestmark = pytest.mark.browser

JOBS = 3


async def test_batch_page_catches_up_after_an_api_kill(
    cluster: FaultCluster,  # noqa: F811
    page: Page,  # noqa: F811
) -> None:
    """Jobs end while the API is down; back up, the page shows them all completed, no reload."""
    # Each job prints its lines, then holds until the gate file exists: it ends only once the API
    # is down, however long the page takes to load on a loaded machine.
    gate = cluster.records / "ui-batch-gate"
    parameters = [
        {
            "lines": 20,
            "interval": "0.01",
            "record": str(cluster.records / f"ui-batch-{n}.txt"),
            "label": f"ui-batch-{n}",
            "hold_until": str(gate),
        }
        for n in range(JOBS)
    ]
    body = {
        "batch_name": "outage",
        "jobs": [{"job_type": "free", "parameters": p} for p in parameters],
    }
    async with cluster.client() as client:
        created = await client.post("/api/batches", json=body)
    assert created.status_code == 201, created.text
    batch_id = created.json()["batch_id"]
    job_ids = created.json()["job_ids"]
    try:
        await page.goto(f"/batches/{batch_id}")
        card = page.locator("#batch-card")
        await expect(card).to_be_visible()
        await page.evaluate("window.sameDocument = true")

        cluster.services["api"].kill()
        shown = await card.locator('[data-count="completed"]').text_content()
        assert shown != str(JOBS), "the jobs ended before the fault: it did not bite"
        await expect(page.locator("#conn-banner")).to_be_visible(timeout=30_000)
        gate.touch()
        for job_id in job_ids:
            row = await cluster.wait_job(job_id, is_terminal, 60)
            assert row is not None
            assert row.status == "completed", outcome(row)
        await cluster.start_service("api")

        await expect(page.locator("#conn-banner")).to_be_hidden(timeout=30_000)
        await expect(card.locator('[data-count="completed"]')).to_have_text(str(JOBS))
        await expect(card.get_by_role("img", name="Status: Erfolgreich")).to_be_visible()
        for kind in ("pending", "running", "failed", "cancelled"):
            await expect(card.locator(f'[data-count="{kind}"]')).to_have_text("0")
        rows = page.locator("#batch-jobs-body [data-job-row]")
        await expect(rows).to_have_count(JOBS)
        for n in range(JOBS):
            await expect(rows.nth(n)).to_have_attribute("data-status", "completed")
        assert await page.evaluate("window.sameDocument") is True
    finally:
        gate.touch()
        for job_id in job_ids:
            await cluster.cancel(job_id)
