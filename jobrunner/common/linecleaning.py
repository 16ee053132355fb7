"""How a line of a tool's text is stored, whoever sends it: the runner (what a tool printed) and
the API (the lines an external job's worker reports) clean it with this one function, so the same
text is stored the same way on both paths.

Kept: the text, tabs, ANSI colour codes (SGR; the web UI renders them) and the other C0 controls
(BEL, BS, VT, FF, ...) and DEL as printed: they are single characters, not sequences, and no
consumer obeys them as they travel (JSON escapes them, the terminal commands and the download show
them as symbols, ``common.terminaltext``). Finding them would also cost every line of a flood
another pass over its bytes (``bench.line_cleaning``). Shown: NUL as ␀ (Postgres' text cannot hold
it). Removed: every other ECMA-48 escape sequence, whole, and every C1 control. Of a carriage-return
progress bar the last state that shows something is kept, as a terminal would show it.
"""

from __future__ import annotations

import re

# ECMA-48's escape and control sequences, 7-bit (ESC ...) and 8-bit (C1) alike: what a terminal
# would obey, not show. A sequence cut short (by the line's end, or by a character that cannot
# continue it) matches as far as it got, so removing them leaves no ESC and no C1 control. A
# string's payload goes up to its ST (ESC \ or U+009C; an OSC's also up to BEL, as xterm ends it);
# an ESC that is not ST ends it too (as xterm does), CAN and SUB cancel it (ECMA-48, DEC), and a
# carriage return or line break ends it here: the text after it is the tool's, and a progress
# bar's last state must not depend on where a pipe read fell. One never ended reaches the text's
# end (a terminal would show none of it either).
_STRING_END = r"\x1b\\|\x9c"  # ST
_OSC_PAYLOAD = rf"[^\x07\x1b\x9c\r\n\x18\x1a]*(?:\x07|{_STRING_END})?"
_DCS_PAYLOAD = rf"[^\x1b\x9c\r\n\x18\x1a]*(?:{_STRING_END})?"  # DCS, SOS, PM, APC: ST only
_AFTER_ESC = (
    r"\[[0-?]*[ -/]*[@-~]?"  # CSI: cursor, erase, modes (ESC [ 2 J)
    rf"|\]{_OSC_PAYLOAD}"  # OSC (ESC ] 0;title BEL)
    rf"|[PX^_]{_DCS_PAYLOAD}"  # DCS, SOS, PM, APC (ESC P q... ESC \)
    # nF with its intermediates (ESC ( 0, ESC # 8), Fp (ESC 7, ESC =), Fe (ESC D), Fs (ESC c);
    # nothing: a lone ESC
    r"|[ -/]*[0-~]?"
)
_C1_LED = (
    r"\x9b[0-?]*[ -/]*[@-~]?"  # the 8-bit CSI (U+009B 2 J)
    rf"|\x9d{_OSC_PAYLOAD}"  # the 8-bit OSC
    rf"|[\x90\x98\x9e\x9f]{_DCS_PAYLOAD}"  # the 8-bit DCS, SOS, PM, APC
    r"|[\x80-\x9f]"  # every other C1 control (U+0085 NEL, U+009C ST alone, ...)
)
ESCAPE_RE = re.compile(rf"\x1b(?:{_AFTER_ESC})|{_C1_LED}")  # colour codes too: for plain text
# What a stored line loses: ESCAPE_RE's sequences but colour codes (SGR: ESC [ ... m). Removed by
# ``sub("")``, no Python call per match; without C1 (the text holds none) every match begins with
# the literal ESC, which the regex engine finds as fast as ``str.find`` (with a C1 alternative it
# tries every character).
REMOVED_WITHOUT_C1 = re.compile(rf"\x1b(?!\[[0-9;]*m)(?:{_AFTER_ESC})")
_REMOVED = re.compile(rf"{REMOVED_WITHOUT_C1.pattern}|{_C1_LED}")
_C1 = re.compile(r"[\x80-\x9f]")


def clean_line(text: str, holds_c1: bool | None = None) -> str:
    """``text`` (one line: no line break) as it is stored: NUL shown as ␀, colour codes kept,
    every other escape sequence and every C1 control removed, of a carriage-return progress bar
    its last state. ``holds_c1``: whether ``text`` holds a C1 control, when the caller already
    knows (the runner looks at a whole read's bytes at once); None: looked for here."""
    text = text.replace("\x00", "␀")
    if holds_c1 is None:
        holds_c1 = _C1.search(text) is not None
    if holds_c1:
        text = _REMOVED.sub("", text)
    elif "\x1b" in text:
        text = REMOVED_WITHOUT_C1.sub("", text)
    if "\r" in text:
        parts = [p for p in text.split("\r") if p]
        text = parts[-1] if parts else ""
    return text
