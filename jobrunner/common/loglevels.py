"""Log levels as tools print them: where the runner reads a line's level, and whether a line
already shows it.

A line's level is read from its start (after an optional timestamp), where tools print it
(``INFO    Starte ...``, ``2025-12-27 12:15:00 WARNING ...``). Such a line shows its level
itself; a rendering of the log (the download, the terminal client) that writes a level column
as well would show it twice, so it leaves the column out for those lines (``shows_level``, and
``SHOWS_LEVEL_SQL`` where Postgres formats the lines).
"""

from __future__ import annotations

import re

LEVEL_RE = re.compile(
    r"^\s*"
    # an optional timestamp: 2025-12-27 12:15:00[,123], 2025-12-27T12:15:00Z, [12:15:00], 12:15:00
    r"(?:\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\]?\s+"
    r"|\[?\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\]?\s+)?"
    r"[\[(]?(?P<level>DEBUG|INFO|SUCCESS|WARNING|WARN|ERROR|CRITICAL|FATAL)[\])]?(?=[\s:|-]|$)",
    re.IGNORECASE,
)
LEVEL_SCAN_CHARS = 200  # the level is looked for in a line's first 200 characters
LEVEL_ALIASES = {"WARN": "WARNING", "CRITICAL": "ERROR", "FATAL": "ERROR"}
LEVELS = ("DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR")


def level_of_word(word: str, default: str = "INFO") -> str:
    """The level a matched level word names (any case, aliases folded), else ``default``."""
    level = word.upper()
    level = LEVEL_ALIASES.get(level, level)
    return level if level in LEVELS else default


# The only escape sequences a stored line keeps (the runner removes the others).
COLOUR_CODE_RE = re.compile(r"\x1b\[[0-9;]*m")


def shows_level(text: str, level: str) -> bool:
    """Does the stored line ``text`` start with a level word naming ``level`` (colour codes
    aside, as the runner reads it)?"""
    match = LEVEL_RE.match(COLOUR_CODE_RE.sub("", text[: 4 * LEVEL_SCAN_CHARS])[:LEVEL_SCAN_CHARS])
    return match is not None and level_of_word(match["level"], "") == level


def shows_level_sql(text: str, level: str) -> str:
    """``shows_level`` as a Postgres condition on the SQL expressions ``text`` and ``level``.

    ``LEVEL_RE`` is written in the syntax Python's ``re`` and Postgres's advanced regular
    expressions share; its one named group becomes the pattern's only capturing group, whose
    match ``substring`` returns."""
    pattern = "(?i)" + LEVEL_RE.pattern.replace("(?P<level>", "(")
    word = f"upper(substring(left({text}, {LEVEL_SCAN_CHARS}) FROM '{pattern}'))"
    aliases = " ".join(f"WHEN '{alias}' THEN '{to}'" for alias, to in LEVEL_ALIASES.items())
    return f"(CASE {word} {aliases} ELSE {word} END) IS NOT DISTINCT FROM {level}"
