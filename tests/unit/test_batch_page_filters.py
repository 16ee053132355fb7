"""The /batches page's sentences about a filter value it cannot take (batch_page_filters.py) are
in the page's language: each is a sentence of that language's catalogue, filled with what the
link holds, and every such sentence of the catalogue exists in every language of the UI."""

from __future__ import annotations

import re
import string
from pathlib import Path

from hypothesis import strategies as st

from jobrunner.services.api.batch_page_filters import filter_problems
from jobrunner.services.api.batch_readmodels import BATCH_STATUSES
from jobrunner.services.api.i18n import DEFAULT_LANGUAGE, LANGUAGES, TEXT, translator
from jobrunner.services.api.queryparams import ARCHIVED_CHOICES, MAX_SEARCH_LENGTH
from tests.tools.drawn_examples import examples

JOB_TYPES = ("enrich_email", "scraper")
# Every sentence the page's alert can show about a filter (``filters.fix`` closes the list).
PROBLEM_KEYS = sorted(
    key for key in TEXT[DEFAULT_LANGUAGE] if key.startswith("filters.") and key != "filters.fix"
)
DEFAULTS = {
    "status": "",
    "archived": "false",
    "job_type": "",
    "search": "",
    "created_from": "",
    "created_to": "",
}
WORD = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
DAY = st.dates().map(lambda day: day.isoformat())
# A link's filters, each a good value, a bad one, or none.
FILTERS = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["", *BATCH_STATUSES]) | WORD | st.just("running,bogus"),
        "archived": st.sampled_from(ARCHIVED_CHOICES) | WORD,
        "job_type": st.sampled_from(["", *JOB_TYPES]) | WORD,
        "search": st.just("")
        | WORD
        | st.integers(MAX_SEARCH_LENGTH + 1, 500).map(lambda n: "x" * n)
        | WORD.map(lambda w: w + "\x00"),
        "created_from": st.just("") | DAY | WORD,
        "created_to": st.just("") | DAY | WORD,
    }
)
LINKS = examples(FILTERS, 300)


def _pattern(template: str) -> re.Pattern[str]:
    """``template`` with each placeholder a group of the same name."""
    parts = []
    for literal, field, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field:
            parts.append(f"(?P<{field}>.+?)")
    return re.compile("".join(parts))


def _values_of(filters: dict[str, str]) -> set[str]:
    """What a sentence may quote: the link's values (each of a list too), the filters' names,
    their choices, the search's limit."""
    values = set(filters.values()) | set(filters) | {str(MAX_SEARCH_LENGTH)}
    values |= {part.strip() for value in filters.values() for part in value.split(",")}
    values |= {", ".join(c) for c in (BATCH_STATUSES, ARCHIVED_CHOICES, JOB_TYPES)}
    return values


def test_every_filter_sentence_is_the_page_language_s_own() -> None:
    """A German page says what is wrong with a filter in German (before: a search too long gave
    "Die Suche geht nicht: 'search' is longer than 200 characters."), an English one in English:
    each sentence is the language's own, filled only with what the link holds."""
    shown: set[str] = set()
    for lang in LANGUAGES:
        patterns = {key: _pattern(TEXT[lang][key]) for key in PROBLEM_KEYS}
        t = translator(lang)
        for filters in LINKS:
            link = {**DEFAULTS, **filters}
            for sentence in filter_problems(link, JOB_TYPES, t):
                matched = {
                    key: found.groupdict()
                    for key, pattern in patterns.items()
                    if (found := pattern.fullmatch(sentence))
                }
                assert matched, (lang, sentence)
                key, quoted = next(iter(matched.items()))
                foreign = set(quoted.values()) - _values_of(link)
                assert not foreign, (lang, sentence, foreign)
                shown.add(key)
    # Every sentence of the catalogue was shown by some link: none is there untried.
    assert shown == set(PROBLEM_KEYS)


# Where the /batches page's alerts take their sentences: the filter problems (the module), the
# alerts' own lines in the page's template (``filters.fix``, ``batches.unavailable``).
API = Path(__file__).parents[2] / "jobrunner" / "services" / "api"
ALERT_SOURCES = (API / "batch_page_filters.py", API / "templates" / "batches.html")
NAMED_KEY = re.compile(r"""\bt\(\s*["']([a-z_]+\.[A-Za-z0-9_.]*[A-Za-z0-9])["']""")


def _alert_keys() -> set[str]:
    """The keys named on the lines of ``ALERT_SOURCES`` that are an alert's (or a filter's)."""
    keys = set(PROBLEM_KEYS)
    for source in ALERT_SOURCES:
        for line in source.read_text().splitlines():
            if source.suffix == ".py" or 'role="alert"' in line or "filter_problems" in line:
                keys |= set(NAMED_KEY.findall(line))
    return keys


def test_every_filter_alert_sentence_is_translated_in_every_language() -> None:
    """Each sentence the /batches page's alerts can show is the language's own words in every
    language the UI offers, not the default's (German) on an English page. (That every key
    exists in every language is test_i18n's.)"""
    keys = _alert_keys()
    assert {"filters.fix", "batches.unavailable"} <= keys  # the scan sees the alerts' lines
    for lang in LANGUAGES:
        if lang != DEFAULT_LANGUAGE:
            for key in keys:
                assert TEXT[lang][key] != TEXT[DEFAULT_LANGUAGE][key], (lang, key)
