"""Log levels as tools print them: where the runner reads a line's level, and whether a line
already shows it; the levels and streams a stored line has (``Level``, ``Stream``), one
definition for the runner, the external jobs' reports, the log API and the projector.

A line's level is read from its start (after an optional timestamp), where tools print it
(``INFO    Starte ...``, ``2025-12-27 12:15:00 WARNING ...``). A line that starts with its
stored level (``INFO    Starte ...``) shows it itself; a rendering of the log (the download, the
terminal client) that writes a level column as well would show it twice, so it leaves the column
out for those lines (``shows_level``, and ``shows_level_sql`` where Postgres formats the lines).
"""

from __future__ import annotations

import re
from typing import Literal, get_args

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
# A stored line's level and stream: what the runner and external jobs' reports write.
Level = Literal["DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"]
Stream = Literal["stdout", "stderr"]
LEVELS: tuple[Level, ...] = get_args(Level)
STREAMS: tuple[Stream, ...] = get_args(Stream)


def level_of_word(word: str, default: str = "INFO") -> str:
    """The level a matched level word names (any case, aliases folded), else ``default``."""
    level = word.upper()
    level = LEVEL_ALIASES.get(level, level)
    return level if level in LEVELS else default


def shows_level(text: str, level: str) -> bool:
    """Does the stored line ``text`` start with ``level`` itself, then a space or tab, or end?

    Exactly the stored (canonical, uppercase) level: no alias (``WARN``), no other case, no
    colour code before it. A rendering that leaves the level column out for such lines still
    has a canonical level as every line's second field, so the download stays one parseable
    layout, and Postgres checks it with one comparison (``shows_level_sql``)."""
    return text[: len(level) + 1] in (level, level + " ", level + "\t")


def shows_level_sql(text: str, level: str) -> str:
    """``shows_level`` as a Postgres condition on the SQL expressions ``text`` and ``level``."""
    return f"left({text}, length({level}) + 1) IN ({level}, {level} || ' ', {level} || E'\\t')"
