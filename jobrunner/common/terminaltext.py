r"""Text from a tool or the event stream as a terminal is shown it: as text, whatever it holds.

A tool's lines are stored as the runner cleaned them: colour codes kept (the web UI shows them as
CSS classes), every other escape sequence and C1 control removed, C0 controls (BEL, BS, ...) kept
as printed. And a log or an event stored by an older version (before session 39, ``ESC c``, a
terminal's full reset, ``ESC ( 0``, its line-drawing glyphs, and 8-bit C1 controls such as U+009B,
a CSI to terminals that take them, got through) or published by another program holds whatever it
held, and a terminal obeys it all. So what the terminal commands print (``jobrunner logs``,
``submit --follow``, ``events``) drops colour codes (the client colours each line by its level
itself) and shows every other control character as a visible symbol: a C0 control or DEL as its
U+2400 control picture (``␛``), a C1 control as its escape (``\x9b``: told apart from the U+FFFD
the runner writes for bytes that are not UTF-8). The bidirectional overrides and isolates
(U+202A-U+202E, U+2066-U+2069) are shown as their escapes (``\u202e``) too: they are not controls
to a terminal, but they reorder what follows them, so a line could read otherwise than it is
("Trojan Source"); other format characters are left as they are.

Plain ``str`` in, ``str`` out, no terminal library: ``jobrunner events`` (``common.eventlog``)
and the terminal client (``terminal/``) both print through it. A downloaded log
(``GET /api/jobs/{id}/logs/download``) is text for a terminal or an editor too, and is written by
Postgres a chunk at a time: ``visible_sql`` is the same rule as a Postgres expression.
"""

from __future__ import annotations

import re

_COLOUR_CODE = re.compile(r"\x1b\[[0-9;:]*m")  # SGR, what the runner keeps of escape sequences
# Tabs are text; every other C0 control, DEL, the C1 controls and the bidi overrides are shown.
_SHOWN = {code: chr(0x2400 + code) for code in range(0x20) if code != 0x09}
_SHOWN[0x7F] = "\u2421"
_SHOWN.update({code: f"\\x{code:02x}" for code in range(0x80, 0xA0)})
_BIDI_OVERRIDES = [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_SHOWN.update({code: f"\\u{code:04x}" for code in _BIDI_OVERRIDES})


# For Postgres: NUL is left out, as its text cannot hold one (the runner stores it as ␀).
_SINGLE = {chr(code): shown for code, shown in _SHOWN.items() if len(shown) == 1 and code}
_SEVERAL = {chr(code): shown for code, shown in _SHOWN.items() if len(shown) > 1}
# Any character of _SHOWN but NUL (ESC among them: a colour code), as a regex class (only
# control and format characters: none is special inside brackets).
_ANY_SHOWN = "[" + "".join(chr(code) for code in sorted(_SHOWN) if code) + "]"


def visible(text: str) -> str:
    """``text`` without colour codes, its control characters and bidi overrides turned into
    visible symbols."""
    if "\x1b" in text:
        text = _COLOUR_CODE.sub("", text)
    return text.translate(_SHOWN)


def visible_sql(text: str) -> str:
    """``visible`` as a Postgres expression on the SQL expression ``text``: a text with nothing
    to show (most) is left as it is after one regex scan (``translate`` looks each character up
    in its list: six times slower over a million-line download, ``bench/RESULTS.md``); else
    ``translate`` for the characters shown as one symbol, and only where a C1 control or a bidi
    override is found (rare: a line stored before session 39, or by another program), a
    ``replace`` for each of those, shown as several characters."""
    plain = (
        f"CASE WHEN strpos({text}, E'\\x1b') > 0 "
        f"THEN regexp_replace({text}, {_sql_literal(_COLOUR_CODE.pattern)}, '', 'g') "
        f"ELSE {text} END"
    )
    shown = (
        f"translate({plain}, {_sql_literal(''.join(_SINGLE))}, "
        f"{_sql_literal(''.join(_SINGLE.values()))})"
    )
    each = shown
    for char, symbol in _SEVERAL.items():
        each = f"replace({each}, {_sql_literal(char)}, {_sql_literal(symbol)})"
    several = _sql_literal("[" + "".join(_SEVERAL) + "]")
    changed = f"CASE WHEN {text} ~ {several} THEN {each} ELSE {shown} END"
    return f"CASE WHEN {text} ~ {_sql_literal(_ANY_SHOWN)} THEN {changed} ELSE {text} END"


def _sql_literal(text: str) -> str:
    """``text`` as a Postgres escape string literal of printable ASCII (others as \\uXXXX)."""
    out = []
    for char in text:
        if char in "\\'":
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}")
    return "E'" + "".join(out) + "'"
