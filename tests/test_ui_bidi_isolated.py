"""Names and text a tool or a user gave, stored before bidirectional overrides were refused (or
in a tool's output, which keeps them): the web UI shows each isolated (``<bdi>``, ``dir=auto``),
so an override in it stops at its end and cannot reorder the page's text around it. Checked in
real Chromium on the pages that show them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import pytest
from playwright.async_api import Page, expect

from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.events import JobStatus
from tests.batch_support import batch_events
from tests.history_support import job_events, publish, wait_projected
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES

pytestmark = pytest.mark.browser

BATCH_NAME = "b\u202eidi"  # listed as "bidi" (its own text reversed) before
REASON = "stop \u202e now"
ARTIFACT = "invoice\u202efdp.exe"  # read "invoiceexe.pdf" before
LINE = "wrote \u202eevil.txt"
TITLE = "Export \u202ecsv.exe"  # a job type's title (configuration, not checked for overrides)
# How a label names it: its override dropped, the title between FSI and PDI (U+2068, U+2069).
TITLE_IN_LABEL = "\u2068Export csv.exe\u2069"
DASH = "\u2013"  # between a side panel row's parts in its label


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The tests' job types, and ``spoof`` whose title holds an override."""
    job_types = tmp_path / "jobtypes.toml"
    job_types.write_text(
        Path(TEST_TYPES).read_text()
        + '\n[job_types.spoof]\ntitle = "Export \\u202ecsv.exe"\n'
        + 'argv = ["{python}", "tests/tools/emit.py"]\n'
    )
    return msgspec.structs.replace(settings, job_types_file=str(job_types))


@pytest.fixture
def system(projector_and_api: System) -> System:
    """No runner (for tests.browser's ``page``): the jobs published here keep their status."""
    return projector_and_api


async def isolation_of(page: Page, selector: str, text: str) -> str:
    """The ``unicode-bidi`` Chromium computes for the text matching ``selector`` and ``text``
    within its line: the first inline element from it up to its block that is not ``normal``,
    else ``normal`` (a block isolates its lines anyway, but not one part of a line from the
    rest: a name followed by other text in the same line needs an inline isolate)."""
    return str(
        await page.locator(selector)
        .filter(has_text=text)
        .first.evaluate(
            """element => {
                for (let at = element; at; at = at.parentElement) {
                    const style = getComputedStyle(at);
                    if (!style.display.startsWith("inline")) return "normal";
                    if (style.unicodeBidi !== "normal") return style.unicodeBidi;
                }
                return "normal";
            }"""
        )
    )


async def test_old_batch_names_and_reasons_are_shown_isolated(
    page: Page, projector_and_api: System, settings: Settings
) -> None:
    """A batch named ``b<U+202E>idi`` and failed with ``stop <U+202E> now`` (stored before the
    refusal): on /batches and on its page both are isolated."""
    stream: list[events.Publishable] = [*batch_events("old", 1, name=BATCH_NAME)]
    stream.append(events.BatchFailed(batch_id="old", reason=REASON))
    await wait_projected(settings, await publish(settings, stream))

    await page.goto("/batches")
    assert await isolation_of(page, "[data-batch-link]", BATCH_NAME) == "isolate"
    await page.goto("/batches/old")
    # The name and the reason are each a block of their own there (nothing else in their line),
    # which Chromium isolates; they are marked dir=auto all the same.
    for field, shown in (("name", BATCH_NAME), ("failed_reason", REASON)):
        cell = page.locator(f'[data-field="{field}"]')
        assert (await cell.text_content(), await cell.get_attribute("dir")) == (shown, "auto")
    # The page's title is plain text: the name's own override dropped, the name isolated.
    await expect(page).to_have_title("\u2068bidi\u2069 · Jobrunner")


async def test_a_batch_pages_title_is_isolated_before_its_script_runs(
    page: Page, projector_and_api: System, settings: Settings
) -> None:
    """The title the server writes for batch ``b<U+202E>idi`` is the one the script sets:
    ``<FSI>bidi<PDI> · Jobrunner`` (before: the raw name until the script replaced it)."""
    await wait_projected(settings, await publish(settings, batch_events("old", 1, name=BATCH_NAME)))
    await page.route("**/*.js", lambda route: route.abort())  # no script: the server's title
    await page.goto("/batches/old")
    assert await page.title() == "\u2068bidi\u2069 · Jobrunner"


async def labels_naming(page: Page, text: str) -> list[str]:
    """Every ``aria-label`` on the page holding ``text``'s letters (its controls aside)."""
    letters = text.replace("\u202e", "")
    labels = await page.locator("[aria-label]").evaluate_all(
        "elements => elements.map(element => element.getAttribute('aria-label'))"
    )
    return [label for label in labels if letters in label.replace("\u202e", "")]


async def test_job_type_titles_in_labels_are_isolated(
    page: Page, projector_and_api: System, settings: Settings
) -> None:
    """A job type titled ``Export <U+202E>csv.exe``: each label naming it (a running job's log
    and checkbox, a past job's checkbox and link, the side panel's row, the batch page's link)
    holds it isolated, its override dropped, so a screen reader reads it in order; so does the
    job's page title."""
    stream: list[events.Publishable] = [
        *job_events("running", "spoof", status=JobStatus.RUNNING),
        *job_events("done", "spoof", minute=1, status=JobStatus.COMPLETED),
        *batch_events("spoofs", 1, name="spoofs", job_types=["spoof"]),
    ]
    await wait_projected(settings, await publish(settings, stream))

    await page.goto("/jobs")
    await expect(page.locator('[data-select="done"]')).to_be_attached()
    await expect(page.locator('[data-select="running"]')).to_be_attached()
    await expect(page.locator("#panel-list [data-link]")).to_have_count(3)  # the side panel
    assert set(await labels_naming(page, TITLE)) == {
        f"Log-Ausgabe: {TITLE_IN_LABEL}",
        f"Auswählen: {TITLE_IN_LABEL}",
        f"Logs anzeigen: {TITLE_IN_LABEL}",
        f"{TITLE_IN_LABEL} {DASH} Status: Läuft {DASH} Läuft",
        f"{TITLE_IN_LABEL} {DASH} Status: Erfolgreich {DASH} Erfolgreich",
        f"{TITLE_IN_LABEL} {DASH} Status: Wartend {DASH} Wartend",
    }

    await page.goto("/jobs/done")  # the job's page is titled with its type's title
    assert await page.title() == f"{TITLE_IN_LABEL} · Jobrunner"

    await page.goto("/batches/spoofs")
    await expect(page.locator("#batch-jobs-body [data-link]")).to_have_attribute(
        "aria-label", f"Logs anzeigen: {TITLE_IN_LABEL} 1"
    )


async def test_each_parameter_value_in_a_running_jobs_summary_is_isolated(
    page: Page, projector_and_api: System, settings: Settings
) -> None:
    """An active job's one-line summary ``query: x<U+202E>, zlimit: 5``: the value is isolated,
    so ", zlimit: 5" after it is not turned around (before: one plain text line)."""
    stream = job_events(
        "active", "emit", status=JobStatus.RUNNING, parameters={"query": "x\u202e", "zlimit": 5}
    )
    await wait_projected(settings, await publish(settings, stream))

    await page.goto("/jobs")
    summary = page.locator("[data-summary]").filter(has_text="zlimit")
    assert await isolation_of(page, "[data-summary] bdi", "x\u202e") == "isolate"
    # Where Chromium draws them (the text's logical order would not change): "z", ":" and the
    # next value "5" left to right, all to the right of the first value's box.
    value_right, z, colon, five = await summary.evaluate(
        """summary => {
            const [value, next] = summary.querySelectorAll("bdi");
            const after = value.nextSibling;  // the text ", zlimit: "
            const left = at => {
                const range = document.createRange();
                range.setStart(after, at);
                range.setEnd(after, at + 1);
                return range.getClientRects()[0].left;
            };
            return [
                value.getBoundingClientRect().right,
                left(after.data.indexOf("z")),
                left(after.data.indexOf(":")),
                next.getBoundingClientRect().left,
            ];
        }"""
    )
    assert value_right <= z < colon < five, (value_right, z, colon, five)


async def test_old_artifact_names_and_tool_lines_are_shown_isolated(
    page: Page, projector_and_api: System, settings: Settings
) -> None:
    """A job with an artifact ``invoice<U+202E>fdp.exe`` (stored before the refusal) and a log
    line holding an override: on the job page the name's link and the line's text are isolated."""
    stream: list[events.Publishable] = [
        *job_events("spoof", "emit", status=JobStatus.COMPLETED, lines=[LINE])
    ]
    stream.insert(
        -1,
        events.ArtifactStored(
            job_id="spoof",
            name=ARTIFACT,
            size=2,
            sha256=hashlib.sha256(b"MZ").hexdigest(),
            object_name=f"spoof/{ARTIFACT}",
        ),
    )
    await wait_projected(settings, await publish(settings, stream))

    await page.goto("/jobs/spoof")
    assert await isolation_of(page, "#artifacts a", ARTIFACT) == "isolate"
    assert await isolation_of(page, ".log-row .txt", LINE) == "isolate"
    # Its label too, as the server wrote it and as the script writes it when a live job ends.
    label = "\u2068invoicefdp.exe\u2069 herunterladen"
    link = page.locator("#artifacts [data-artifact-rows] a")
    await expect(link).to_have_attribute("aria-label", label)
    await page.evaluate(
        """async () => {
            const { refreshArtifacts } = await import("/static/js/artifacts.js");
            const link = document.querySelector("#artifacts [data-artifact-rows] a");
            link.removeAttribute("aria-label");
            await refreshArtifacts(document.getElementById("artifacts"));
        }"""
    )
    await expect(link).to_have_attribute("aria-label", label)


async def test_an_imported_files_name_and_values_are_shown_isolated(
    page: Page, tmp_path: Path
) -> None:
    """Rows imported from ``r<U+202E>ows.csv`` with an override in a value: in the new batch's
    preview the file's name and each value are isolated (before: one plain line of text)."""
    await page.goto("/jobs?lang=en")
    await page.get_by_role("button", name="New batch").click()
    await expect(page.locator('#batch-job-params [data-job-type="emit"]')).to_be_attached()
    rows_file = tmp_path / "r\u202eows.csv"
    rows_file.write_text("lines;interval\n1;0\u202e\n")
    await page.get_by_label("Import a file (CSV or JSON)").set_input_files(str(rows_file))
    summary = page.locator("#batch-list-body [data-summary]")
    await expect(summary).to_have_count(1)
    assert await summary.locator("bdi").all_text_contents() == ["1", "0\u202e", rows_file.name]
    assert await isolation_of(page, "[data-summary] bdi", rows_file.name) == "isolate"
    assert await isolation_of(page, "[data-summary] bdi", "0\u202e") == "isolate"
