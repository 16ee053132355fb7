"""The web UI's language: ?lang=, then the cookie, then Accept-Language; German by default."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.services.api.i18n import DEFAULT_LANGUAGE, LANGUAGES, TEXT, negotiate, translator


def test_explicit_choice_wins_over_cookie_and_browser() -> None:
    """?lang=en shows English even with a German cookie and a German browser."""
    assert negotiate("en", "de", "de-DE") == "en"


def test_cookie_wins_over_the_browser() -> None:
    """A language chosen before is remembered over the browser's preference."""
    assert negotiate(None, "en", "de-DE,de;q=0.9") == "en"


def test_unknown_choice_falls_through() -> None:
    """?lang=fr is not a language of the UI, so the cookie and browser decide."""
    assert negotiate("fr", "xx", "en-GB") == "en"


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("en-US,en;q=0.9", "en"),
        ("fr-FR, en;q=0.5, de;q=0.8", "de"),
        ("de;q=0.1, en;q=0.2", "en"),
        ("en;q=0, de;q=0.1", "de"),
        ("en;q=abc", "de"),
        ("EN", "en"),
        ("en, de", "en"),
        ("fr", DEFAULT_LANGUAGE),
        ("", DEFAULT_LANGUAGE),
        (None, DEFAULT_LANGUAGE),
    ],
)
def test_browser_preference_by_quality_then_order(header: str | None, lang: str) -> None:
    """The browser's highest-quality language the UI has wins; ties go to the first listed."""
    assert negotiate(None, None, header) == lang


@settings(deadline=None)
@given(st.text(alphabet=string.printable, max_size=60))
def test_any_accept_language_gives_a_ui_language(header: str) -> None:
    """Whatever Accept-Language a browser sends, the page is in one of the UI's languages."""
    assert negotiate(None, None, header) in LANGUAGES


def test_every_word_exists_in_every_language() -> None:
    """No screen shows a key instead of a word: each language has every key the default has."""
    for lang in LANGUAGES:
        assert set(TEXT[lang]) == set(TEXT[DEFAULT_LANGUAGE]), lang


def test_placeholders_are_filled_in() -> None:
    """A message with a placeholder shows the value given for it."""
    assert translator("en")("live.started", title="Scraper") == "Job Scraper started"


def test_unknown_key_shows_the_key() -> None:
    """A key no language has shows itself, so a missing word is visible, not a crash."""
    assert translator("en")("no.such.key") == "no.such.key"


def test_same_placeholders_in_every_language() -> None:
    """Each translation takes the same placeholders as the default, so none is left unfilled."""
    fields = {
        lang: {
            k: {f for _, f, _, _ in string.Formatter().parse(v) if f} for k, v in TEXT[lang].items()
        }
        for lang in LANGUAGES
    }
    for lang in LANGUAGES:
        for key, names in fields[DEFAULT_LANGUAGE].items():
            assert fields[lang].get(key, names) == names, (lang, key)


API = Path(__file__).parents[2] / "jobrunner" / "services" / "api"
# ``t('jobs.title')`` in a template, ``t("live.started", ...)`` in a script or in Python; a key
# built at run time (``'status.' ~ s``) shows only its fixed start, which ends in "_" or ".".
NAMED_KEY = re.compile(r"""\bt\(\s*["']([a-z_]+\.[A-Za-z0-9_.]*[A-Za-z0-9])["']""")


def test_every_word_a_page_names_is_in_the_catalogue() -> None:
    """Every key the pages, their scripts and the page routes name is one of the catalogue's (a
    key it lacks shows as ``jobs.titel`` on the screen); checked in every language, which
    test_every_word_exists_in_every_language makes the same."""
    files = [*API.glob("static/js/*.js"), *API.glob("templates/*.html"), *API.rglob("*.py")]
    named = {(m.group(1), f.name) for f in files for m in NAMED_KEY.finditer(f.read_text())}
    assert len(named) > 100  # the scan sees the pages' words
    missing = [
        (key, where, lang) for key, where in named for lang in LANGUAGES if key not in TEXT[lang]
    ]
    assert not missing
