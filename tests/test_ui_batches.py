"""The job center in a real browser: composing and importing a batch, the batch pages live,
the actions with their confirmation, multi-select on /jobs, keyboard only, both languages."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.ui_support import LOW_CONTRAST, start_job, wait_for_status

pytestmark = pytest.mark.browser


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES)


def record_posts(page: Page) -> list[str]:
    """The addresses of every POST the page sends (to prove that nothing was sent)."""
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    return posts


async def open_batch_dialog(page: Page, path: str = "/jobs") -> None:
    await page.goto(path)
    await page.wait_for_selector("html[data-ready]")
    await page.get_by_role("button", name="Neuer Batch").click()
    await expect(page.get_by_role("dialog", name="Neuen Batch zusammenstellen")).to_be_visible()
    await expect(page.locator('#batch-job-params [data-job-type="emit"]')).to_be_attached()


async def test_csv_import_with_a_bad_row_marks_it_and_sends_nothing(
    page: Page, system: System, tmp_path: Path
) -> None:
    """A CSV whose third row has a bad value shows the error at that row; nothing is sent."""
    posts = record_posts(page)
    await open_batch_dialog(page)
    await page.get_by_label("Name des Batches").fill("Import")
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text("lines;interval\n1;0\n2;0.1\n3;soon\n4;0\n")
    await page.get_by_label("Datei importieren (CSV oder JSON)").set_input_files(str(csv_file))

    rows = page.locator("#batch-list-body [data-batch-list-row]")
    await expect(rows).to_have_count(4)
    await expect(page.locator("#batch-import-status")).to_contain_text("1 Zeilen haben Fehler")
    bad = rows.nth(2)
    await expect(bad).to_have_attribute("data-invalid", "true")
    await expect(bad.locator("[data-row-errors]")).to_contain_text(
        "interval: Passt nicht zum erwarteten Format: must match ^[0-9.]+$"
    )
    await expect(bad).to_contain_text("rows.csv, Zeile 4")
    for good in (0, 1, 3):
        await expect(rows.nth(good).locator("[data-row-errors] li")).to_have_count(0)

    await page.get_by_role("button", name="Batch starten").click()
    await expect(page.locator("#new-batch-alert")).to_contain_text(
        "Bitte die markierten Zeilen korrigieren oder entfernen."
    )
    await expect(bad.get_by_role("button")).to_be_focused()
    assert not [url for url in posts if "/api/batches" in url or "/api/jobs" in url]


async def test_json_import_of_rows_that_are_not_objects_is_marked_per_row(
    page: Page, system: System, tmp_path: Path
) -> None:
    """In English, a JSON list with a number instead of an object marks that row and no other;
    of a long file, every bad row and the first 200 good ones are listed, the rest counted."""
    await page.goto("/jobs?lang=en")
    await page.get_by_role("button", name="New batch").click()
    await expect(page.locator('#batch-job-params [data-job-type="emit"]')).to_be_attached()
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps([{"lines": 2}, 7, {"lines": 3, "nope": 1}] + [{}] * 202))
    await page.get_by_label("Import a file (CSV or JSON)").set_input_files(str(rows_file))
    rows = page.locator("#batch-list-body [data-batch-list-row]")
    await expect(rows).to_have_count(202)
    await expect(page.locator("#batch-list-count")).to_have_text("205")
    await expect(page.locator("#batch-list-body")).to_contain_text(
        "… and 3 more rows without errors (not shown)"
    )
    await expect(rows.nth(0).locator("[data-row-errors] li")).to_have_count(0)
    await expect(rows.nth(1)).to_contain_text("Row: Not a valid value: must be an object")
    await expect(rows.nth(2)).to_contain_text("nope: Unknown parameter")


# -- Against the batch API (POST /api/batches, GET /api/batches, the actions) ---------------


async def create_batch(system: System, name: str, jobs: list[tuple[str, dict[str, Any]]]) -> str:
    body = {"batch_name": name, "jobs": [{"job_type": t, "parameters": p} for t, p in jobs]}
    async with system.client() as client:
        created = await client.post("/api/batches", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["batch_id"])


async def wait_for_batch(
    system: System, batch_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll GET /api/batches/{id} until ``done`` says so (60 s at most)."""
    async with system.client() as client, asyncio.timeout(60):
        while True:
            response = await client.get(f"/api/batches/{batch_id}")
            if response.status_code == 200 and done(response.json()):
                return dict(response.json())
            await asyncio.sleep(0.1)


async def test_batch_list_counters_move_live_in_english(page: Page, system: System) -> None:
    """/batches shows a new batch and its counters reach "3 completed" without a reload."""
    await page.goto("/batches?lang=en")
    await page.wait_for_selector("html[data-ready]")
    await page.evaluate("window.sameDocument = true")
    batch_id = await create_batch(
        system, "Live list", [("emit", {"lines": 20, "interval": "0.05"})] * 3
    )
    row = page.locator(f'[data-batch-row][data-batch-id="{batch_id}"]')
    await expect(row).to_contain_text("Live list", timeout=30_000)
    await expect(row.locator('[data-count="completed"]')).to_have_text("3", timeout=60_000)
    await expect(row.get_by_role("img", name="Status: Completed")).to_be_visible()
    await expect(row.locator("[data-progress-text]")).to_have_text("100 %")
    assert await page.evaluate("window.sameDocument") is True


async def test_batch_detail_pages_through_jobs_and_fails_with_a_reason(
    page: Page, system: System
) -> None:
    """The detail loads jobs page by page (button, then scrolling); Fail asks for a reason (a
    bidirectional override in it dropped, as control characters are)."""
    # One at a time (the type's lock): most of them are still pending when the batch is failed.
    batch_id = await create_batch(
        system, "Many", [("exclusive", {"lines": 1, "interval": "0.2"})] * 230
    )
    await page.goto(f"/batches/{batch_id}")
    rows = page.locator("#batch-jobs-body [data-job-row]")
    await expect(rows).to_have_count(100)
    await expect(rows.first.locator("[data-index]")).to_have_text("1")
    await page.get_by_role("button", name="Weitere Jobs laden").click()
    await expect(rows).to_have_count(200)
    await rows.last.scroll_into_view_if_needed()
    await page.mouse.wheel(0, 5000)
    await expect(rows).to_have_count(230)
    await expect(page.locator("#batch-jobs-end")).to_be_visible()
    await expect(rows.last.locator("[data-index]")).to_have_text("230")

    await page.get_by_role("button", name="Batch abbrechen (fehlgeschlagen)").click()
    dialog = page.get_by_role("dialog", name="Batch als fehlgeschlagen beenden?")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Ja, ausführen").click()
    await expect(dialog.get_by_role("alert")).to_have_text("Bitte einen Grund angeben.")
    # Pasted with a right-to-left override, which the API refuses: the box drops it.
    await dialog.get_by_label("Grund").fill("Falsche \u202eEingabedatei")
    await dialog.get_by_role("button", name="Ja, ausführen").click()
    await expect(dialog).to_be_hidden()
    card = page.locator("#batch-card")
    await expect(card.get_by_role("img", name="Status: Fehlgeschlagen")).to_be_visible()
    await expect(card.locator('[data-field="failed_reason"]')).to_have_text("Falsche Eingabedatei")
    batch = await wait_for_batch(system, batch_id, lambda b: b["status"] == "failed")
    assert batch["failed_reason"] == "Falsche Eingabedatei"


async def test_batch_composed_from_the_keyboard_runs_and_shows_its_page(
    page: Page, system: System
) -> None:
    """Keyboard only: open Neuer Batch, add two jobs, start; its page shows both completed."""
    await page.goto("/batches")
    await page.wait_for_selector("html[data-ready]")
    for _ in range(20):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "new-batch-open":
            break
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("Name des Batches")).to_be_focused()
    await page.keyboard.type("Tastatur")
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("radio", name="Emit lines")).to_be_focused()
    await expect(page.locator('#batch-job-params [data-job-type="emit"]')).to_be_attached()
    await page.keyboard.press("Tab")
    await expect(page.locator("#batch-param-lines")).to_be_focused()
    for lines in ("2", "3"):
        await page.keyboard.press("Control+A")
        await page.keyboard.type(lines)
        await page.keyboard.press("Enter")  # in a field, Enter adds the job
    await expect(page.locator("#batch-list-body [data-batch-list-row]")).to_have_count(2)
    await page.locator("#batch-name").focus()  # back to a known place, then submit
    await page.keyboard.press("Enter")

    await page.wait_for_url(re.compile(r"/batches/[^/?]+$"))
    card = page.locator("#batch-card")
    await expect(card.locator('[data-field="name"]')).to_have_text("Tastatur")
    await expect(card.locator('[data-count="completed"]')).to_have_text("2", timeout=60_000)
    rows = page.locator("#batch-jobs-body [data-job-row]")
    await expect(rows).to_have_count(2)
    assert await page.evaluate(LOW_CONTRAST) == []


async def test_selected_jobs_restart_from_the_keyboard(page: Page, system: System) -> None:
    """Tick two finished jobs with Space, Restart, confirm: each gets a second attempt."""
    first = await start_job(system, "emit", lines=1)
    second = await start_job(system, "emit", lines=1)
    for job_id in (first, second):
        await wait_for_status(system, job_id, {"completed"})
    await page.goto("/jobs")
    await page.wait_for_selector("html[data-ready]")
    for job_id in (first, second):
        await page.locator(f'input[data-select="{job_id}"]').focus()
        await page.keyboard.press("Space")
    await expect(page.locator("#selection-count")).to_have_text("2 ausgewählt")
    restart = page.get_by_role("button", name="Neu starten")
    await restart.focus()
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="2 Jobs neu starten?")
    await expect(dialog).to_be_visible()
    await page.keyboard.press("Tab")  # from "Zurück" to "Ja, ausführen"
    await page.keyboard.press("Enter")
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#selection-result")).to_have_text("2 erledigt, 0 nicht möglich")
    async with system.client() as client, asyncio.timeout(60):
        while True:
            items = (await client.get("/api/jobs", params={"limit": 10})).json()["items"]
            retries = {j.get("attempt_of") for j in items if j.get("attempt") == 2}
            if retries == {first, second}:
                break
            await asyncio.sleep(0.1)


async def test_side_panel_keeps_its_list_short_when_a_big_batch_arrives(
    page: Page, system: System
) -> None:
    """250 jobs arriving live: the panel lists the newest 200 and still counts all 250 active."""
    await page.goto("/jobs")
    await page.wait_for_selector("html[data-ready]")
    # One lock: the first job runs long, the others wait, so all 250 stay active.
    batch_id = await create_batch(
        system, "Viele", [("exclusive", {"lines": 2000, "interval": "0.1"})] * 250
    )
    try:
        await expect(page.locator("#panel-active-count")).to_have_text("250", timeout=60_000)
        assert await page.locator("#panel-list > li").count() == 200
    finally:
        async with system.client() as client:
            await client.post(f"/api/batches/{batch_id}/fail", json={"reason": "test over"})


async def test_batch_filters_narrow_the_list_and_stay_in_the_address(
    page: Page, system: System
) -> None:
    """Filtering by job type and name shows only the match; a start date ahead shows none."""
    await create_batch(system, "Apfel", [("emit", {"lines": 1})])
    pear = await create_batch(system, "Birne", [("exclusive", {"lines": 1})])
    await page.goto("/batches")
    rows = page.locator("[data-batch-row]")
    await expect(rows).to_have_count(2)

    await page.get_by_label("Job-Typ").select_option("exclusive")
    await page.get_by_label("Suche").fill("irn")
    await page.get_by_role("button", name="Filtern").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-batch-id", pear)
    await expect(page).to_have_url(re.compile(r"/batches\?job_type=exclusive&search=irn$"))

    await page.get_by_label("Angelegt ab").fill("2999-01-01")
    await page.get_by_role("button", name="Filtern").click()
    await expect(rows).to_have_count(0)
    await expect(page.locator("#batches-empty")).to_be_visible()


async def test_archived_batch_leaves_the_default_list_and_comes_back(
    page: Page, system: System
) -> None:
    """Archive (confirmed) hides the batch from /batches; "Nur archivierte" shows it; unarchive."""
    batch_id = await create_batch(system, "Alt", [("emit", {"lines": 1})])
    await page.goto(f"/batches/{batch_id}")
    await page.get_by_role("button", name="Archivieren").click()
    await (
        page.get_by_role("dialog", name="Batch archivieren?")
        .get_by_role("button", name="Ja, ausführen")
        .click()
    )
    await expect(page.locator('#batch-card [data-field="archived"]')).to_be_visible()
    await expect(page.get_by_role("button", name="Aus dem Archiv holen")).to_be_visible()

    await page.goto("/batches")
    await expect(page.locator("#batches-empty")).to_be_visible()
    await page.goto("/batches?archived=true")
    await expect(page.locator(f'[data-batch-row][data-batch-id="{batch_id}"]')).to_be_visible()

    await page.goto(f"/batches/{batch_id}")
    await page.get_by_role("button", name="Aus dem Archiv holen").click()
    await (
        page.get_by_role("dialog", name="Batch aus dem Archiv holen?")
        .get_by_role("button", name="Ja, ausführen")
        .click()
    )
    await expect(page.get_by_role("button", name="Archivieren")).to_be_visible()
    await page.goto("/batches")
    await expect(page.locator(f'[data-batch-row][data-batch-id="{batch_id}"]')).to_be_visible()


async def test_batch_page_shows_new_attempts_of_a_restart_made_elsewhere(
    page: Page, system: System
) -> None:
    """A restart by someone else: the open batch page lists the new attempts, no reload."""
    batch_id = await create_batch(system, "Zweimal", [("emit", {"lines": 1})] * 2)
    await wait_for_batch(system, batch_id, lambda b: b["status"] == "completed")
    await page.goto(f"/batches/{batch_id}")
    attempts = page.locator("#batch-jobs-body [data-attempt]")
    await expect(attempts).to_have_text(["1", "1"])
    await page.evaluate("window.sameDocument = true")
    async with system.client() as client:
        restarted = await client.post(f"/api/batches/{batch_id}/restart", json={})
    assert restarted.status_code == 202, restarted.text
    await expect(attempts).to_have_text(["2", "2"], timeout=30_000)
    assert await page.evaluate("window.sameDocument") is True


async def test_a_bad_filter_in_the_address_is_said_and_lists_nothing_until_fixed(
    page: Page, system: System
) -> None:
    """A link with ``status=bogus`` opens /batches with an alert naming the value and its
    choices in German, lists no batch (not every batch, as if unfiltered) and asks the API for
    none; choosing a filter and "Filtern" takes the alert away and lists the batches."""
    batch_id = await create_batch(system, "Gefiltert", [("emit", {"lines": 1})])
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/batches?" in r.url else None)
    response = await page.goto("/batches?lang=de&status=bogus")
    assert response is not None
    assert response.status == 400
    await page.wait_for_selector("html[data-ready]")
    alert = page.locator("#batches-filter-error")
    await expect(alert).to_have_attribute("role", "alert")
    await expect(alert).to_contain_text("„bogus“ ist kein möglicher Wert für status")
    await expect(alert).to_contain_text("pending, running, completed, failed, cancelled")
    await expect(alert).to_contain_text("Die Liste bleibt leer, bis der Filter berichtigt ist")
    await expect(page.locator("#batches-body [data-batch-row]")).to_have_count(0)
    assert not asked  # nothing listed, nothing asked for

    await page.get_by_role("search").get_by_label("Status").select_option("")
    await page.get_by_role("button", name="Filtern").click()
    await expect(alert).to_have_count(0)
    row = page.locator(f'[data-batch-row][data-batch-id="{batch_id}"]')
    await expect(row).to_contain_text("Gefiltert", timeout=30_000)
    assert asked
    assert "bogus" not in page.url


async def test_a_search_too_long_in_the_address_is_said_in_the_page_s_language(
    page: Page, system: System
) -> None:
    """``?lang=en&search=`` of 201 characters: the alert says the limit in English, and the
    German page says it in German (before: in English on both)."""
    for lang, words in (("en", "longer than 200 characters"), ("de", "länger als 200 Zeichen")):
        response = await page.goto(f"/batches?lang={lang}&search={'x' * 201}")
        assert response is not None
        assert response.status == 400
        await page.wait_for_selector("html[data-ready]")
        await expect(page.locator("#batches-filter-error")).to_contain_text(words)
