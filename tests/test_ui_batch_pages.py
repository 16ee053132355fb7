"""The job center's pages on the server side: /batches, /batches/{id}, the batch dialog's form,
multi-select on /jobs, in both languages and fit for the strict CSP."""

from __future__ import annotations

import json
import re
from typing import Any

from jobrunner.common.bidicontrols import isolated
from tests.system import System
from tests.ui_support import (
    settings,  # noqa: F401  (the fixture: the test job types)
    start_job,
    wait_for_status,
)


async def test_batches_page_speaks_german_and_english(system: System) -> None:
    """/batches has its title, the New batch button and the filters in the reader's language."""
    async with system.client() as client:
        german = await client.get("/batches")
        english = await client.get("/batches?lang=en")
    assert german.status_code == 200
    assert "Neuer Batch" in german.text
    assert "Ohne archivierte" in german.text
    assert "New batch" in english.text
    assert "Not archived" in english.text


async def test_batches_page_keeps_the_filters_of_its_address(system: System) -> None:
    """A bookmarked /batches?status=failed&job_type=emit opens with those filters chosen."""
    async with system.client() as client:
        page = (await client.get("/batches?status=failed&job_type=emit&search=abc")).text
    assert re.search(r'<option value="failed" selected>', page)
    assert re.search(r'<option value="emit" selected>', page)
    assert 'name="search" class="input input-sm w-full" value="abc"' in page


async def test_batches_page_ignores_a_parameter_it_does_not_take(system: System) -> None:
    """A parameter the page does not take (a misspelt filter, a shared link's utm_source) is
    ignored as on every page, and the filter form shows nothing chosen for it, so the list is
    plainly unfiltered; a bad value of a filter it takes is a 400 (test_batches_page_filters.py).
    The API (``/api/batches``) stays strict."""
    async with system.client() as client:
        response = await client.get("/batches?staus=failed")
        api = await client.get("/api/batches?staus=failed")
    assert response.status_code == 200
    assert '<option value="failed" selected>' not in response.text
    assert api.status_code == 400
    assert "staus" in api.json()["error"]["message"]


async def create_batch(system: System, name: str = "Zwei", jobs: int = 2) -> dict[str, Any]:
    body = {"batch_name": name, "jobs": [{"job_type": "emit", "parameters": {}}] * jobs}
    async with system.client() as client:
        created = await client.post("/api/batches", json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


async def test_batch_page_carries_its_id_and_the_four_actions(system: System) -> None:
    """/batches/{id} names the batch and offers restart, pending, fail and archive."""
    batch_id = (await create_batch(system, "Vier Aktionen"))["batch_id"]
    async with system.client() as client:
        page = (await client.get(f"/batches/{batch_id}")).text
    assert f'data-batch-id="{batch_id}"' in page
    assert f"<title>{isolated('Vier Aktionen')} · Jobrunner</title>" in page
    for action in ("restart", "pending", "fail", "archive", "unarchive"):
        assert f'data-batch-action="{action}"' in page
    assert "Ausstehende neu starten" in page
    assert 'id="confirm-dialog"' in page


async def test_batch_page_of_an_unknown_batch_is_not_found(system: System) -> None:
    """An address of a batch that does not exist answers 404 BATCH_NOT_FOUND."""
    async with system.client() as client:
        response = await client.get("/batches/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "BATCH_NOT_FOUND"


async def test_batch_dialog_fields_have_their_own_ids(system: System) -> None:
    """The batch dialog's form is the New job form with ids of its own (both are on /jobs)."""
    async with system.client() as client:
        fragment = (await client.get("/ui/batch-job-form/emit")).text
        jobs = (await client.get("/jobs")).text
        missing = await client.get("/ui/batch-job-form/nope")
    assert 'id="batch-param-lines"' in fragment
    assert 'id="param-lines"' not in fragment
    assert missing.status_code == 404
    ids = re.findall(r'\bid="([^"]+)"', jobs)
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


async def test_jobs_page_carries_the_schemas_the_import_checks_against(system: System) -> None:
    """/jobs carries each type's parameter schema (no argv or flags) for the row checks."""
    async with system.client() as client:
        page = (await client.get("/jobs")).text
    block = re.search(r'id="parameter-schemas">(.*?)</script>', page)
    assert block is not None
    schemas = json.loads(block.group(1))
    assert schemas["emit"]["lines"]["maximum"] == 2000000
    assert "flag" not in schemas["emit"]["lines"]
    assert "--lines" not in block.group(1)


async def test_recent_jobs_have_a_checkbox_each(system: System) -> None:
    """Each recent job row has a labelled checkbox, and the table one to select all."""
    job_id = await start_job(system, "emit", lines=1)
    await wait_for_status(system, job_id, {"completed"})
    async with system.client() as client:
        page = (await client.get("/jobs")).text
    assert 'data-select-all aria-label="Alle auf dieser Seite auswählen"' in page
    assert f'data-select="{job_id}" aria-label="Auswählen: {isolated("Emit lines")}"' in page
    assert 'data-selection-action="restart"' in page


async def test_job_center_pages_have_no_inline_code_or_styles(system: System) -> None:
    """The new pages run under the strict CSP: no inline script, handler, style or remote asset."""
    batch_id = (await create_batch(system))["batch_id"]
    async with system.client() as client:
        pages = [
            (await client.get(path)).text
            for path in ("/batches", f"/batches/{batch_id}", "/ui/batch-job-form/emit", "/jobs")
        ]
    for html in pages:
        for script in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in script or 'type="application/json"' in script, script
        assert not re.search(r"\son[a-z]+\s*=", html)
        assert not re.search(r"\sstyle\s*=", html)
        assert not re.search(r"""(?:src|href)=["']https?://""", html)


async def test_job_detail_names_its_batch_and_place(system: System) -> None:
    """A job of a batch links to its batch and says which place in it it has."""
    answer = await create_batch(system)
    async with system.client() as client:
        await wait_for_status(system, answer["job_ids"][1], {"pending", "running", "completed"})
        page = (await client.get(f"/jobs/{answer['job_ids'][1]}")).text
    assert f'href="/batches/{answer["batch_id"]}" data-batch-link' in page
    assert "Platz im Batch 2" in page


async def test_job_detail_links_every_attempt(system: System) -> None:
    """A restarted job's page says it is attempt 2 and links back to attempt 1 (and its status)."""
    first = await start_job(system, "emit", lines=1)
    await wait_for_status(system, first, {"completed"})
    async with system.client() as client:
        restarted = await client.post(f"/api/jobs/{first}/restart")
        assert restarted.status_code == 201, restarted.text
        second = restarted.json()["id"]
        await wait_for_status(system, second, {"pending", "running", "completed"})
        later = (await client.get(f"/jobs/{second}")).text
        earlier = (await client.get(f"/jobs/{first}")).text
    assert f'href="/jobs/{first}" aria-label="Versuch 1: Erfolgreich"' in later
    assert re.search(r'aria-current="page">2<', later)
    assert f'href="/jobs/{second}"' in earlier
    assert "Es gibt einen neueren Versuch." in earlier
