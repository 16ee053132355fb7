"""Live updates in a real browser: the side panel, and reconnecting after a server restart."""

from __future__ import annotations

import msgspec
import pytest
from playwright.async_api import Page, Route, expect

from jobrunner.common.bidicontrols import isolated
from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.tools.page_recorders import RECORD_ROWS
from tests.ui_support import start_job, wait_for_status

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


async def test_side_panel_shows_jobs_and_patches_them_live(page: Page, system: System) -> None:
    """The panel lists a job started elsewhere and follows it to its end without a reload."""
    await page.goto("/jobs")
    await page.get_by_role("button", name="Verarbeitung").click()
    panel = page.get_by_role("dialog", name="Verarbeitung")
    await expect(panel).to_be_visible()

    job_id = await start_job(system, "emit", lines=40, interval="0.05")
    row = panel.locator(f'li[data-job-id="{job_id}"]')
    await expect(row).to_contain_text("Emit lines")
    await expect(row).to_have_attribute("data-status", "completed", timeout=30_000)
    await expect(row.get_by_role("link")).to_have_accessible_name(
        f"{isolated('Emit lines')} \u2013 Status: Erfolgreich, 100 % \u2013 Erfolgreich"
    )
    await page.keyboard.press("Escape")
    await expect(panel).to_be_hidden()


async def test_side_panel_loads_older_jobs(page: Page, system: System) -> None:
    """Beyond the first page, "Ältere laden" appends the older jobs, newest first."""
    ids = [await start_job(system, "emit", lines=0) for _ in range(22)]
    await wait_for_status(system, ids[-1], {"completed"})
    await page.goto("/jobs")
    await page.get_by_role("button", name="Verarbeitung").click()
    rows = page.locator("#panel-list > li")
    await expect(rows).to_have_count(20)
    await page.get_by_role("button", name="Ältere laden").click()
    await expect(rows).to_have_count(22)
    shown = [await r.get_attribute("data-job-id") for r in await rows.all()]
    assert shown == ids[::-1]
    await expect(page.get_by_text("Keine älteren Jobs.")).to_be_visible()


async def test_reconnect_after_restart_loses_and_repeats_no_line(
    page: Page, system: System
) -> None:
    """The API restarts mid-job: the page says so, reconnects, and shows every line once."""
    # Twenty seconds of lines: the job must still run when the page starts recording its rows
    # (eight were not always, in a CI run at load 20: its card had left the running list).
    total = 200
    job_id = await start_job(system, "emit", lines=total, interval="0.1")
    await page.goto("/jobs")
    terminal = page.locator(f'[data-terminal][data-job-id="{job_id}"]')
    await expect(terminal).to_contain_text(f"line 3 [3/{total}]")
    await page.evaluate(RECORD_ROWS, job_id)

    await system.stop_api()
    banner = page.locator("#conn-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Verbindung unterbrochen")
    await system.start_api()
    await expect(banner).to_be_hidden(timeout=30_000)

    await wait_for_status(system, job_id, {"completed"})
    await page.wait_for_function(f"window.seenSeqs.includes({total})")
    seen = await page.evaluate("window.seenSeqs")
    assert seen == list(range(1, total + 1))


# An EventStream on the jobs-list updates, resuming from an id no stream handed out; it records
# its reconnects (the page's re-read of the list) and the events it reads.
RESUME_FROM_AN_ID_AHEAD = """async () => {
  const { EventStream } = await import("/static/js/sse.js");
  window.resyncs = 0;
  window.streamEvents = 0;
  window.aheadStream = new EventStream("/api/jobs/stream", {
    lastEventId: "1000000000",
    onEvent: () => { window.streamEvents += 1; },
    onReconnect: () => { window.resyncs += 1; },
  }).start();
}"""


async def test_update_stream_made_anew_is_read_from_the_start(page: Page, system: System) -> None:
    """A tab holding an id from before the installation was made anew (400 LAST_EVENT_ID_AHEAD)
    re-reads the list and follows the new stream, not "connection lost" for ever."""
    await page.goto("/jobs")
    await page.evaluate(RESUME_FROM_AN_ID_AHEAD)
    await page.wait_for_function("() => window.resyncs === 1", timeout=30_000)
    # Connected without the id: a job started now reaches it.
    await start_job(system, "emit", lines=0)
    await page.wait_for_function("() => window.streamEvents > 0", timeout=30_000)
    assert await page.evaluate("() => window.aheadStream.lastEventId") != "1000000000"
    await expect(page.locator("#conn-banner")).to_be_hidden()


# The job page's stream as another installation's would have left it: one line far beyond this
# job's, under an id beyond anything this stream handed out; then the body ends (a lost
# connection), so the page resumes from that id.
OLD_STREAM = (
    "id: 1000000000\n"
    'data: {"seq": 1000000, "text": "from the old stream", "level": "INFO", "ts": 0}\n\n'
)


class OldStreamOnce:
    """Answers a job's first stream request with a stream made before (ids far ahead of the
    job's), then lets every later request through to the API."""

    def __init__(self) -> None:
        self.served = False

    async def route(self, route: Route) -> None:
        if self.served:
            await route.continue_()
            return
        self.served = True
        await route.fulfill(status=200, content_type="text/event-stream", body=OLD_STREAM)


async def serve_an_old_stream_once(page: Page, job_id: str) -> OldStreamOnce:
    old_stream = OldStreamOnce()
    await page.route(f"**/jobs/stream/{job_id}", old_stream.route)
    return old_stream


async def test_job_page_recovers_when_its_stream_was_made_anew(page: Page, system: System) -> None:
    """A job page following a stream made anew (400 LAST_EVENT_ID_AHEAD on its reconnect)
    shows the job's lines again and follows them, not the old stream's count for ever."""
    job_id = await start_job(system, "emit", lines=300, interval="0.1")
    await wait_for_status(system, job_id, {"running"})
    old_stream = await serve_an_old_stream_once(page, job_id)
    await page.goto(f"/jobs/{job_id}")
    # Recovered: the count is this job's again, and grows with its live lines.
    await page.wait_for_function(
        "() => window.logView?.total > 0 && window.logView.total < 1000000", timeout=30_000
    )
    shown = await page.evaluate("window.logView.total")
    await page.wait_for_function(f"() => window.logView.total > {shown}", timeout=30_000)
    assert old_stream.served
    await expect(page.locator("#log-viewport")).not_to_contain_text("from the old stream")


async def test_job_card_recovers_when_its_stream_was_made_anew(page: Page, system: System) -> None:
    """A running job's card on /jobs whose stream was made anew drops the old stream's lines
    and shows the job's own, live."""
    job_id = await start_job(system, "emit", lines=300, interval="0.1")
    await wait_for_status(system, job_id, {"running"})
    old_stream = await serve_an_old_stream_once(page, job_id)
    await page.goto("/jobs")
    terminal = page.locator(f'[data-terminal][data-job-id="{job_id}"]')
    await expect(terminal).to_contain_text("[20/300]", timeout=30_000)
    assert old_stream.served
    await expect(terminal).not_to_contain_text("from the old stream")
