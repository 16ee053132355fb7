"""Postgres stopped while a browser shows /jobs and the running job ends meanwhile: once Postgres
is back, the page moves the job from its running card to the recent jobs by itself (no reload).
The page's re-render after the job's end failed with 503 and used to be asked for only at the
next change of some job: the finished job stayed on a "running" card, its clock ticking.

A re-render asked just before the job's end (another job changed) and answered after it brought
back the card as the read model had it, "running"; the stream says each status once, and every
re-render after it failed while Postgres was down, so the card said "running" until Postgres
returned: a cause that fits CI's symptom (a loaded machine; CI's logs of it are lost). The
second test holds such an answer back (page.route) to make that order certain. The third plays
back a recent table read before the job's end beside a running card read after it (CI, session
34)."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import APIResponse, Page, Route, expect

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


async def test_jobs_page_lists_a_job_whose_card_went_in_a_render_read_after_the_table(
    cluster: FaultCluster,  # noqa: F811
    page: Page,  # noqa: F811
) -> None:
    """The two sections of one re-render are read at moments apart: the recent table before the
    job's end was projected, the running card after it. The job then shows in neither, and the
    page asks again until its row is in the table. (CI, loaded, right after Postgres came back:
    the row never came, nothing else asked again.) The table's early read is played back here:
    an answer fetched while the job ran, served for the re-render after its end."""
    await page.goto("/jobs")
    await expect(page.locator("#active")).to_be_attached()
    job_id, gate = await cluster.submit_held("ui-jobs-table-first", lines=5)
    read_while_running: list[APIResponse] = []
    serve_it_next = asyncio.Event()
    projected = asyncio.Event()

    async def table_read_early(route: Route) -> None:
        if serve_it_next.is_set() and read_while_running:
            serve_it_next.clear()
            await route.fulfill(response=read_while_running.pop())
            return
        answer = await route.fetch()
        if not read_while_running:
            read_while_running.append(answer)
        await route.fulfill(response=answer)

    async def card_read_late(route: Route) -> None:
        if serve_it_next.is_set():
            async with asyncio.timeout(60):
                await projected.wait()
        await route.continue_()

    try:
        card = page.locator(f'#active [data-job-card][data-job-id="{job_id}"]')
        await expect(card).to_have_attribute("data-status", "running", timeout=30_000)
        await page.route("**/ui/recent", table_read_early)
        await page.route("**/ui/active", card_read_late)
        async with page.expect_response(lambda r: r.url.endswith("/ui/recent"), timeout=60_000):
            await page.evaluate("document.body.dispatchEvent(new CustomEvent('jobs-changed'))")
        assert read_while_running, "the table was not read while the job ran"

        serve_it_next.set()
        gate.touch()
        row = await cluster.wait_job(job_id, lambda r: r.status == "completed", timeout=60)
        assert row is not None, "the job's end was never projected"
        assert row.status == "completed", row
        projected.set()
        await expect(card).to_have_count(0, timeout=60_000)
        recent = page.locator(f'#recent [data-job-row][data-job-id="{job_id}"]')
        await expect(recent).to_have_attribute("data-status", "completed", timeout=10_000)
    finally:
        projected.set()
        gate.touch()
        await cluster.cancel(job_id)
