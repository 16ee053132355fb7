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
and the terminal client (``terminal/``) both print through it.
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


def visible(text: str) -> str:
    """``text`` without colour codes, its control characters and bidi overrides turned into
    visible symbols."""
    if "\x1b" in text:
        text = _COLOUR_CODE.sub("", text)
    return text.translate(_SHOWN)
