"""A string parameter's regex ``pattern`` is shown on the new-job form as what it is, a rule the
value must match ("must match ^[0-9.]+$"), or as the job type's own words for it
(``pattern_help``), never labelled "format" as if the regex were a format to type in."""

from __future__ import annotations

import html
import re

import msgspec
import pytest

from jobrunner.common.settings import Settings
from tests.system import System
from tests.tools.runners import RUNNER_TYPES

ENGLISH = {"Accept-Language": "en"}


def help_text(form: str, name: str) -> str:
    """The text under the field ``name`` of a job form fragment, tags stripped."""
    found = re.search(rf'id="[^"]*{name}-help"[^>]*>(.*?)</p>', form, re.S)
    assert found, form
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()


async def test_a_pattern_is_shown_as_a_rule_to_match(system: System) -> None:
    """The default scraper's PLZ filter: its help, then its own words for the pattern."""
    async with system.client() as client:
        form = (await client.get("/ui/job-form/scraper", headers=ENGLISH)).text
    said = help_text(form, "plz_filter")
    assert "format" not in said.lower(), said
    assert "bis zu fünf Ziffern" in said, said  # the type's own (German) words


@pytest.fixture
def runner_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES)


async def test_a_pattern_without_words_is_shown_as_must_match(runner_settings: Settings) -> None:
    """A type that gives no words for its pattern: "must match <pattern>"."""
    system = System(runner_settings)
    await system.start_projector()
    await system.start_api()
    try:
        async with system.client() as client:
            form = (await client.get("/ui/job-form/emit", headers=ENGLISH)).text
    finally:
        await system.stop()
    said = help_text(form, "interval")
    assert "format" not in said.lower(), said
    assert "must match ^[0-9.]+$" in said, said


async def test_a_value_not_matching_the_pattern_is_told_in_the_types_words(system: System) -> None:
    """A bad PLZ posted to the API: the field error says what the value must be in the job
    type's words, then the pattern. (Before: the bare regex, "must match ^[0-9]{0,5}$".)"""
    async with system.client() as client:
        response = await client.post(
            "/api/jobs", json={"job_type": "scraper", "parameters": {"plz_filter": "4x"}}
        )
    assert response.status_code == 422, response.text
    (field,) = response.json()["error"]["fields"]
    assert field["code"] == "PATTERN_MISMATCH"
    assert field["message"] == (
        "must be bis zu fünf Ziffern (der Anfang einer Postleitzahl) (must match ^[0-9]{0,5}$)"
    )
