"""The /batches page opened with a filter value it cannot take (a hand-edited or stale link:
``?status=bogus``) answers 400 with the page and a sentence on it naming the value and the
choices, not the whole list as if unfiltered (before: the select fell back to "any" and every
batch was listed). Parameters the page does not take (``utm_source``) are still ignored."""

from __future__ import annotations

import html

import pytest

from tests.system import System


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("status=bogus", ["bogus", "pending, running, completed, failed, cancelled"]),
        ("archived=maybe", ["maybe", "false, true, all"]),
        ("job_type=nope", ["nope", "scraper"]),
        ("created_from=yesterday", ["yesterday", "YYYY-MM-DD"]),
        ("created_from=2026-03-02&created_to=2026-03-01", ["2026-03-02", "2026-03-01"]),
        # The API's bound on search (before: a 200 page, then "cannot be loaded right now").
        ("search=" + "x" * 201, ["search", "200"]),
        ("search=a%00b", ["search", "NUL"]),
        ("status=running,bogus", ["bogus", "pending, running"]),
    ],
)
async def test_a_bad_filter_value_is_said_on_the_page(
    system: System, query: str, said: list[str]
) -> None:
    """400, an HTML page (not JSON) whose alert names the bad value and what it may be."""
    async with system.client() as client:
        response = await client.get(f"/batches?lang=en&{query}")
    assert response.status_code == 400, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    alert = response.text.split('id="batches-filter-error"', 1)[1].split("</div>", 1)[0]
    for words in said:
        assert words in html.unescape(alert), alert


async def test_good_filters_and_unknown_parameters_show_the_page(system: System) -> None:
    """Known values, and a parameter the page does not take (a shared link's utm_source): 200,
    no alert."""
    async with system.client() as client:
        for query in (
            "status=running&archived=all&created_from=2026-03-01&created_to=2026-03-02",
            "utm_source=newsletter",
            # Lists, as GET /api/batches takes them (before: 400 on the page).
            "status=running,failed&job_type=scraper,enrich_email",
            "search=" + "x" * 200,
        ):
            response = await client.get(f"/batches?{query}")
            assert response.status_code == 200, (query, response.text[:300])
            assert 'id="batches-filter-error"' not in response.text


@pytest.mark.parametrize(
    ("query", "said", "not_said"),
    [
        ("search=" + "x" * 201, ["Suche", "200 Zeichen"], "longer than"),
        ("search=a%00b", ["Suche", "NUL-Zeichen"], "contains a NUL"),
        ("status=bogus", ["bogus", "kein möglicher Wert"], "is not a possible"),
    ],
)
async def test_a_german_page_says_a_bad_filter_in_german(
    system: System, query: str, said: list[str], not_said: str
) -> None:
    """The German page (the default) names a bad filter value in German, the search's too
    (before: "Die Suche geht nicht: 'search' is longer than 200 characters.")."""
    async with system.client() as client:
        response = await client.get(f"/batches?lang=de&{query}")
    assert response.status_code == 400, response.text[:500]
    alert = html.unescape(
        response.text.split('id="batches-filter-error"', 1)[1].split("</div>", 1)[0]
    )
    for words in said:
        assert words in alert, alert
    assert not_said not in alert, alert
