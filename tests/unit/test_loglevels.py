"""Whether a log line already shows its level (renderings then write no level column)."""

from __future__ import annotations

import pytest

from jobrunner.common.loglevels import shows_level
from jobrunner.terminal.follow import level_column


@pytest.mark.parametrize(
    ("text", "level", "shown"),
    [
        ("INFO    Starte DATEV Scraper...", "INFO", True),
        ("ERROR\tgone", "ERROR", True),
        ("INFO", "INFO", True),
        ("WARN disk almost full", "WARNING", False),  # an alias: the column stays
        ("warning: disk almost full", "WARNING", False),  # another case
        ("ERROR: gone", "ERROR", False),  # not followed by a space or tab
        ("[12:15:00] ERROR gone", "ERROR", False),  # a timestamp first
        ("\x1b[31mERROR\x1b[0m failed", "ERROR", False),  # a colour code first
        ("INFO request failed", "ERROR", False),  # a job type's level_pattern read another
        ("plain text", "INFO", False),
        ("INFOS are words too", "INFO", False),
        ("", "INFO", False),
    ],
)
def test_shows_level(text: str, level: str, shown: bool) -> None:
    """Only a line starting with exactly its stored level, then a space, tab or end, shows it."""
    assert shows_level(text, level) is shown


def test_terminal_client_writes_a_level_column_only_where_the_text_has_none() -> None:
    """``jobrunner logs``/``follow`` print ``INFO    Starte`` once, and ``INFO    plain``."""
    assert level_column({"level": "INFO", "text": "INFO    Starte"}) == ""
    assert level_column({"level": "INFO", "text": "plain"}) == "INFO    "


def test_terminal_client_writes_no_level_column_before_a_coloured_level() -> None:
    """A tool's green ``INFO`` prints as ``INFO started``, not ``INFO    INFO started``: the
    client drops colour codes, so the level it shows is there once."""
    assert level_column({"level": "INFO", "text": "\x1b[32mINFO\x1b[0m started"}) == ""
    assert level_column({"level": "ERROR", "text": "\x1b[32mINFO\x1b[0m started"}) == "ERROR   "
