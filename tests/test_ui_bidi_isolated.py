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

from jobrunner.common.bidicontrols import isolated
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
TITLE_IN_LABEL = isolated(TITLE)
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


async def own_isolation(page: Page, selector: str, text: str) -> str:
    """The ``unicode-bidi`` Chromium computes for the element matching ``selector`` and
    ``text`` itself (a ``<bdi>``: ``isolate``, whatever its layout)."""
    element = page.locator(selector).filter(has_text=text).first
    return str(await element.evaluate("element => getComputedStyle(element).unicodeBidi"))


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
        await expect(cell).to_have_text(shown)  # filled by the page's script
        assert await cell.get_attribute("dir") == "auto"
    # The page's title is plain text: the name's own override dropped, the name isolated.
    await expect(page).to_have_title(f"{isolated(BATCH_NAME)} · Jobrunner")


async def test_a_batch_pages_title_is_isolated_before_its_script_runs(
    page: Page, projector_and_api: System, settings: Settings
) -> None:
    """The title the server writes for batch ``b<U+202E>idi`` is the one the script sets:
    ``<FSI>bidi<PDI> · Jobrunner`` (before: the raw name until the script replaced it)."""
    await wait_projected(settings, await publish(settings, batch_events("old", 1, name=BATCH_NAME)))
    await page.route("**/*.js", lambda route: route.abort())  # no script: the server's title
    await page.goto("/batches/old")
    assert await page.title() == f"{isolated(BATCH_NAME)} · Jobrunner"


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
        f"{TITLE_IN_LABEL} spoof",  # the running job's card
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


async def test_job_type_titles_shown_are_isolated(
    page: Page, projector_and_api: System, settings: Settings
) -> None:
    """The same title wherever it is shown: a running job's card (its heading, and its
    accessible name, which held the raw override), the history's row, the side panel's row,
    the cancel dialog, the job's page heading and the batch page's row each show it inside a
    ``<bdi>`` (the headings and the dialog's sentence go on after it). A heading's parts are
    flex items (blocks, isolated by their layout too), so its ``<bdi>``'s own style is read."""
    stream: list[events.Publishable] = [
        *job_events("running", "spoof", status=JobStatus.RUNNING),
        *job_events("done", "spoof", minute=1, status=JobStatus.COMPLETED),
        *batch_events("spoofs", 1, name="spoofs", job_types=["spoof"]),
    ]
    await wait_projected(settings, await publish(settings, stream))

    await page.goto("/jobs")
    card = page.locator('[data-job-card][data-job-id="running"]')
    await expect(card).to_have_attribute("aria-label", f"{TITLE_IN_LABEL} spoof")
    await expect(page.locator("#panel-list [data-link]")).to_have_count(3)
    for shown in (
        '[data-job-card][data-job-id="running"] h3 bdi',
        '#recent [data-job-row][data-job-id="done"] bdi',
        "#panel-list [data-title]",
    ):
        assert await own_isolation(page, shown, TITLE) == "isolate", shown
    await card.locator("[data-cancel]").click()
    dialog = page.locator("#cancel-dialog")
    await expect(dialog).to_be_visible()
    assert await isolation_of(page, "#cancel-dialog [data-cancel-name]", TITLE) == "isolate"

    await page.goto("/jobs/done")
    assert await own_isolation(page, "h1 bdi", TITLE) == "isolate"

    await page.goto("/batches/spoofs")
    await expect(page.locator("#batch-jobs-body [data-title]")).to_have_text(TITLE)
    assert await own_isolation(page, "#batch-jobs-body [data-title]", TITLE) == "isolate"


# Every text #announcer takes (each announcement replaces the one before, 50 ms after clearing
# it): kept in window.announced so that a test can wait for one however soon the next comes.
RECORD_ANNOUNCEMENTS = """() => {
    window.announced = [];
    const region = document.getElementById("announcer");
    new MutationObserver(() => {
        if (region.textContent) window.announced.push(region.textContent);
    }).observe(region, { childList: true, characterData: true, subtree: true });
}"""


async def announced(page: Page, text: str) -> None:
    """Wait until the page announced exactly ``text``."""
    await page.wait_for_function("text => window.announced.includes(text)", arg=text)


async def test_job_type_titles_in_announcements_are_isolated(
    page: Page, projector_and_api: System, settings: Settings
) -> None:
    """The announcements naming a job type's title hold it isolated: a ``spoof`` job started
    from the dialog, one started elsewhere appearing on the page, ``spoof`` added to a new
    batch, and a job's end on the jobs page and on its own page (which read the title from the
    page: an empty title once it was in a ``<bdi>``, before the scripts read it there)."""
    await page.goto("/jobs")
    await page.wait_for_selector("html[data-ready]")
    await page.evaluate(RECORD_ANNOUNCEMENTS)

    await page.get_by_role("button", name="Neuer Job").click()
    await page.locator('#new-job-dialog input[name="job_type"][value="spoof"]').check()
    await expect(page.locator('#job-params [data-job-type="spoof"]')).to_be_attached()
    await page.locator("#new-job-submit").click()
    await announced(page, f"Job gestartet: {TITLE_IN_LABEL}")

    await publish(settings, job_events("elsewhere", "spoof", status=JobStatus.RUNNING))
    await announced(page, f"Job {TITLE_IN_LABEL} gestartet")

    await page.get_by_role("button", name="Neuer Batch").click()
    await page.locator('#new-batch-dialog input[name="batch_job_type"][value="spoof"]').check()
    await expect(page.locator('#batch-job-params [data-job-type="spoof"]')).to_be_attached()
    await page.locator("#batch-add").click()
    await announced(page, f"Job hinzugefügt: {TITLE_IN_LABEL}")
    await page.keyboard.press("Escape")

    # Its end, on the jobs page (the title read from its card) and on its own page.
    await expect(page.locator('[data-job-card][data-job-id="elsewhere"]')).to_be_attached()
    await publish(settings, [finished("elsewhere")])
    await announced(page, f"Job {TITLE_IN_LABEL} beendet: Erfolgreich")
    watched = job_events("watched", "spoof", status=JobStatus.RUNNING)
    await wait_projected(settings, await publish(settings, watched))  # its page is there
    await page.goto("/jobs/watched")
    await page.wait_for_selector("html[data-ready]")
    await page.evaluate(RECORD_ANNOUNCEMENTS)
    await publish(settings, [finished("watched")])
    await announced(page, f"Job {TITLE_IN_LABEL} beendet: Erfolgreich")


def finished(job_id: str) -> events.StatusChanged:
    """Job ``job_id``'s end: completed."""
    return events.StatusChanged(
        job_id=job_id, event_id=events.terminal_event_id(job_id), status=JobStatus.COMPLETED
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
    label = f"{isolated(ARTIFACT)} herunterladen"
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


async def test_the_pages_isolated_is_the_servers(page: Page, projector_and_api: System) -> None:
    """The script's ``isolated`` (static/js/text.js) writes what the server's
    (``bidicontrols.isolated``) writes, so a title or a label reads alike before and after the
    script replaced it: every control, a name of controls only, letters of other scripts."""
    names = [
        "",
        BATCH_NAME,
        TITLE,
        ARTIFACT,
        "".join(chr(code) for code in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]),
        "\u2067\u05e9\u05dc\u05d5\u05dd\u2069 \U0001f600 a\u200fb\u2066c",
    ]
    await page.goto("/jobs")
    shown = await page.evaluate(
        """async names => {
            const { isolated } = await import("/static/js/text.js");
            return names.map(isolated);
        }""",
        names,
    )
    assert shown == [isolated(name) for name in names]
