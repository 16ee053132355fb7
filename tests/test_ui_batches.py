"""The job center in a real browser: composing and importing a batch, the batch pages live,
the actions with their confirmation, multi-select on /jobs, keyboard only, both languages."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from tests.system import System
from tests.ui_support import TEST_TYPES

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
    """In English, a JSON list with a number instead of an object marks that row and no other."""
    await page.goto("/jobs?lang=en")
    await page.get_by_role("button", name="New batch").click()
    await expect(page.locator('#batch-job-params [data-job-type="emit"]')).to_be_attached()
    rows_file = tmp_path / "rows.json"
    rows_file.write_text('[{"lines": 2}, 7, {"lines": 3, "nope": 1}]')
    await page.get_by_label("Import a file (CSV or JSON)").set_input_files(str(rows_file))
    rows = page.locator("#batch-list-body [data-batch-list-row]")
    await expect(rows).to_have_count(3)
    await expect(rows.nth(0).locator("[data-row-errors] li")).to_have_count(0)
    await expect(rows.nth(1)).to_contain_text("Row: Not a valid value: must be an object")
    await expect(rows.nth(2)).to_contain_text("nope: Unknown parameter")
