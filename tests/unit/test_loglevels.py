"""Whether a log line already shows its level (renderings then write no level column)."""

from __future__ import annotations

import pytest

from jobrunner.common.loglevels import shows_level
from jobrunner.services.runner.output import parse_level
from jobrunner.terminal.follow import level_column


@pytest.mark.parametrize(
    ("text", "level", "shown"),
    [
        ("INFO    Starte DATEV Scraper...", "INFO", True),
        ("warn: disk almost full", "WARNING", True),
        ("[12:15:00] CRITICAL gone", "ERROR", True),
        ("\x1b[31mERROR\x1b[0m failed", "ERROR", True),
        ("INFO request failed", "ERROR", False),  # a job type's level_pattern read another
        ("plain text", "INFO", False),
        ("INFOS are words too", "INFO", False),
        ("", "INFO", False),
    ],
)
def test_shows_level(text: str, level: str, shown: bool) -> None:
    """A line starting with its level word (any spelling the runner reads) shows its level."""
    assert shows_level(text, level) is shown


@pytest.mark.parametrize(
    "text", ["INFO x", "SUCCESS 3 gespeichert", "2025-12-27T12:15:00Z WARNING y", "no level"]
)
def test_a_level_the_runner_read_from_the_text_is_shown_by_it(text: str) -> None:
    """Where the runner read the level from the line, the line shows it; else it does not."""
    level = parse_level(text, default="none")
    assert shows_level(text, level) is (level != "none")


def test_terminal_client_writes_a_level_column_only_where_the_text_has_none() -> None:
    """``jobrunner logs``/``follow`` print ``INFO    Starte`` once, and ``INFO    plain``."""
    assert level_column({"level": "INFO", "text": "INFO    Starte"}) == ""
    assert level_column({"level": "INFO", "text": "plain"}) == "INFO    "
