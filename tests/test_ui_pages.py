"""The web UI's server side: languages, the generated forms, and pages fit for a strict CSP."""

from __future__ import annotations

import json
import re
from html import unescape

from jobrunner.common.settings import Settings
from jobrunner.contracts.events import JobStatus
from tests.history_support import job_events, publish, reading_system, wait_projected
from tests.system import System


async def test_pages_are_german_unless_the_browser_prefers_english(system: System) -> None:
    """Without a preference the dashboard speaks German; Accept-Language: en gets English."""
    async with system.client() as client:
        german = await client.get("/jobs")
        english = await client.get("/jobs", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert german.status_code == 200
    assert '<html lang="de">' in german.text
    assert "Neuer Job" in german.text
    assert '<html lang="en">' in english.text
    assert "New job" in english.text


async def test_language_switch_is_remembered(system: System) -> None:
    """Choosing English with ?lang=en keeps English on the next page, whatever the browser says."""
    async with system.client() as client:
        switched = await client.get("/jobs?lang=en", headers={"Accept-Language": "de"})
        later = await client.get("/jobs", headers={"Accept-Language": "de"})
    assert "New job" in switched.text
    assert switched.cookies.get("lang") == "en"
    assert "New job" in later.text


async def test_job_form_is_generated_from_the_schema(system: System) -> None:
    """Each parameter kind gets its control: text with its pattern, checkboxes, radios."""
    async with system.client() as client:
        form = (await client.get("/ui/job-form/enrich_search")).text
    assert 'id="param-plz_filter"' in form
    assert "^[0-9]{0,5}$" in form
    assert re.search(r'type="checkbox" name="confidence_filter" value="none"[^>]*checked', form)
    assert re.search(r'type="radio" name="search_provider" value="serper"[^>]*checked', form)
    assert "Serper (2.500 free/Monat, stabil)" in form
    assert re.search(r'id="param-headless" name="headless" type="checkbox"[^>]*checked', form)


async def test_pages_have_no_inline_code_or_styles(system: System) -> None:
    """No inline script, event handler or style attribute: the pages work under a strict CSP."""
    async with system.client() as client:
        created = await client.post("/api/jobs", json={"job_type": "blacklist_sync"})
        job_id = created.json()["id"]
        pages = [
            (await client.get(path)).text
            for path in ("/jobs", f"/jobs/{job_id}", "/ui/active", "/ui/recent")
        ]
    for html in pages:
        for script in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in script or 'type="application/json"' in script, script
        assert not re.search(r"\son[a-z]+\s*=", html)
        assert not re.search(r"\sstyle\s*=", html)
        assert not re.search(r"""(?:src|href)=["']https?://""", html)


async def test_assets_are_served_from_the_package(system: System) -> None:
    """htmx, the built stylesheet and the scripts come from the app itself, not the internet."""
    async with system.client() as client:
        for path in ("/static/vendor/htmx.min.js", "/static/vendor/app.css", "/static/js/app.js"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert len(response.content) > 1000 or path.endswith("app.js")


async def test_a_result_reads_as_written_on_the_job_page(settings: Settings) -> None:
    """A finished job's result shows its letters as they are ("unvollständig", not
    "unvollst\\u00e4ndig"), as the page's script shows it live, and stays escaped HTML."""
    result = {"summary": "67 gespeichert, 8 unvollständig", "note": "<b>Größe</b> & Co."}
    seq = await publish(settings, job_events("r", status=JobStatus.COMPLETED, result=result))
    async with reading_system(settings) as system:
        await wait_projected(settings, seq)
        async with system.client() as client:
            page = (await client.get("/jobs/r")).text
    shown = re.search(r"<pre [^>]*data-result>(.*?)</pre>", page, re.DOTALL)
    assert shown is not None
    assert json.loads(unescape(shown.group(1))) == result
    assert "8 unvollständig" in shown.group(1)
    assert "&lt;b&gt;Größe&lt;/b&gt; &amp; Co." in shown.group(1)
