"""Log levels as tools print them: where the runner reads a line's level, and whether a line
already shows it.

A line's level is read from its start (after an optional timestamp), where tools print it
(``INFO    Starte ...``, ``2025-12-27 12:15:00 WARNING ...``). A line that starts with its
level word shows its level itself; a rendering of the log (the download, the terminal client)
that writes a level column as well would show it twice, so it leaves the column out for those
lines (``shows_level``, and ``shows_level_sql`` where Postgres formats the lines).
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
# What may follow a level word that starts a line: LEVEL_RE's lookahead, or a closing bracket.
AFTER_LEVEL_WORD = "\t :|-])"


def words_naming(level: str) -> list[str]:
    """The level words the runner reads as ``level`` (``WARNING``: WARNING and WARN)."""
    return [level, *(alias for alias, to in LEVEL_ALIASES.items() if to == level)]


def shows_level(text: str, level: str) -> bool:
    """Does the stored line ``text`` (colour codes aside) start with a word naming ``level``?

    The word first, as tools print it (``INFO    Starte ...``): a line with a timestamp or a
    bracket before it keeps its level column (the download cannot afford ``LEVEL_RE`` in
    Postgres: tens of microseconds a line, seconds for a large log)."""
    plain = COLOUR_CODE_RE.sub("", text[:LEVEL_SCAN_CHARS])
    return any(
        plain[: len(word)].upper() == word and plain[len(word) : len(word) + 1] in AFTER_LEVEL_WORD
        for word in words_naming(level)
    )


def shows_level_sql(text: str, level: str) -> str:
    """``shows_level`` as a Postgres condition on the SQL expressions ``text`` (colour codes
    removed) and ``level``: string comparisons only, about a microsecond a line."""
    after = "E'" + AFTER_LEVEL_WORD.replace("\t", "\\t") + "'"
    by_level = " ".join(
        f"WHEN '{named}' THEN "
        + " OR ".join(
            # strpos of the empty string (the word ends the line) is 1: shown.
            f"(upper(left({text}, {len(word)})) = '{word}' "
            f"AND strpos({after}, substr({text}, {len(word) + 1}, 1)) > 0)"
            for word in words_naming(named)
        )
        for named in LEVELS
    )
    return f"CASE {level} {by_level} ELSE false END"
