"""Postgres stopped while a browser shows /jobs and the running job ends meanwhile: once Postgres
is back, the page moves the job from its running card to the recent jobs by itself (no reload).
The page's re-render after the job's end failed with 503 and used to be asked for only at the
next change of some job: the finished job stayed on a "running" card, its clock ticking.

A re-render asked just before the job's end (another job changed) and answered after it brought
back the card as the read model had it, "running"; the stream says each status once, and every
re-render after it failed while Postgres was down, so the card said "running" until Postgres
returned: a cause that fits CI's symptom (a loaded machine; CI's logs of it are lost). The
second test holds such an answer back (page.route) to make that order certain."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Page, Route, expect

from tests.faults.browser import chromium, cluster, page  # noqa: F401  (fixtures)
from tests.faults.cluster import FaultCluster, is_terminal
from tests.faults.invariants import outcome

pytestmark = pytest.mark.browser


async def test_jobs_page_moves_a_job_that_ended_while_postgres_was_down(
    cluster: FaultCluster,  # noqa: F811
    page: Page,  # noqa: F811
) -> None:
    """A job ends while Postgres is down; back up, /jobs lists it as completed, no reload."""
    # The page is open before the job is requested: its update stream then knows the job from
    # its request and needs no Postgres to follow it, so no reconnect of it re-renders the page.
    await page.goto("/jobs")
    await expect(page.locator("#active")).to_be_attached()
    job_id, gate = await cluster.submit_held("ui-jobs-pg", lines=5)  # it ends once Postgres is down
    postgres_stopped = False
    try:
        card = page.locator(f'#active [data-job-card][data-job-id="{job_id}"]')
        await expect(card).to_have_attribute("data-status", "running", timeout=30_000)
        await page.evaluate("window.sameDocument = true")

        # The job's end reaches the page through NATS; its re-render needs Postgres and fails.
        async with page.expect_response(
            lambda r: r.url.endswith("/ui/active") and r.status == 503, timeout=60_000
        ):
            await asyncio.to_thread(cluster.postgres.stop)
            postgres_stopped = True
            gate.touch()
        await expect(card).to_have_attribute("data-status", "completed")
        await cluster.start_postgres()
        postgres_stopped = False

        row = await cluster.wait_job(job_id, is_terminal, 60)
        assert row is not None
        assert row.status == "completed", outcome(row)
        # The page's retry waits up to REFRESH_RETRY_LONGEST_MS (30 s, jobs-page.js) after a
        # long outage: 60 s is that and as much again for a loaded machine.
        await expect(card).to_have_count(0, timeout=60_000)
        recent = page.locator(f'#recent [data-job-row][data-job-id="{job_id}"]')
        await expect(recent).to_have_attribute("data-status", "completed")
        assert await page.evaluate("window.sameDocument") is True
    finally:
        gate.touch()
        if postgres_stopped:
            await cluster.start_postgres()
        await cluster.cancel(job_id)


async def test_jobs_page_keeps_the_end_its_stream_said_when_an_older_render_arrives_after_it(
    cluster: FaultCluster,  # noqa: F811
    page: Page,  # noqa: F811
) -> None:
    """A re-render answered before the job ended lands after its end: the card stays completed."""
    await page.goto("/jobs")
    await expect(page.locator("#active")).to_be_attached()
    job_id, gate = await cluster.submit_held("ui-jobs-pg-older", lines=5)
    rendered_running = asyncio.Event()
    release = asyncio.Event()
    held = 0

    async def hold_the_first(route: Route) -> None:
        # The server answers at once (Postgres up, the job running); the page gets it later.
        nonlocal held
        if held:
            await route.continue_()
            return
        held += 1
        answer = await route.fetch()
        rendered_running.set()
        await release.wait()
        await route.fulfill(response=answer)

    postgres_stopped = False
    try:
        card = page.locator(f'#active [data-job-card][data-job-id="{job_id}"]')
        await expect(card).to_have_attribute("data-status", "running", timeout=30_000)
        await page.route("**/ui/active", hold_the_first)
        # What another job's change does: both sections are asked to re-render.
        await page.evaluate("document.body.dispatchEvent(new CustomEvent('jobs-changed'))")
        await asyncio.wait_for(rendered_running.wait(), 60)

        await asyncio.to_thread(cluster.postgres.stop)
        postgres_stopped = True
        gate.touch()
        await expect(card).to_have_attribute("data-status", "completed", timeout=60_000)
        # The old answer lands; the re-render it asks for (the job ended) fails: Postgres is down.
        async with page.expect_response(
            lambda r: r.url.endswith("/ui/active") and r.status == 503, timeout=60_000
        ):
            release.set()
        await expect(card).to_have_attribute("data-status", "completed")

        await cluster.start_postgres()
        postgres_stopped = False
        await expect(card).to_have_count(0, timeout=60_000)
        recent = page.locator(f'#recent [data-job-row][data-job-id="{job_id}"]')
        await expect(recent).to_have_attribute("data-status", "completed")
    finally:
        release.set()
        gate.touch()
        if postgres_stopped:
            await cluster.start_postgres()
        await cluster.cancel(job_id)
