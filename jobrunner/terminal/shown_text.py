"""Text from the server as the terminal client prints it: as text, whatever it holds.

A tool's lines reach the client as they were stored: the runner keeps their colour codes (the
web UI shows them as CSS classes) and removes most other escape sequences, but not every one
(``ESC c``, a terminal's full reset; ``ESC ( 0``, its line-drawing glyphs; 8-bit C1 controls
such as U+009B, a CSI to terminals that take them), and a log stored by an older version holds
whatever it held. A terminal obeys them all, so the client drops colour codes (it colours each
line by its level itself) and shows every other control character as a visible symbol
(U+2400's control pictures, U+FFFD for a C1 control), as the web UI shows them as text.
rich reads ``[red]`` in a string as markup and ``[/data/out]`` as a closing tag that closes
nothing (a ``MarkupError``): what the server sends (lines, results, error messages, progress
phases) is never markup either.
"""

from __future__ import annotations

import re

from rich.text import Text

_COLOUR_CODE = re.compile(r"\x1b\[[0-9;:]*m")  # SGR, what the runner keeps of escape sequences
# Tabs are text; every other C0 control, DEL and the C1 controls are shown, never sent.
_SHOWN = {code: chr(0x2400 + code) for code in range(0x20) if code != 0x09}
_SHOWN[0x7F] = "\u2421"
_SHOWN.update({code: "\ufffd" for code in range(0x80, 0xA0)})


def visible(text: str) -> str:
    """``text`` without colour codes, its control characters turned into visible symbols."""
    if "\x1b" in text:
        text = _COLOUR_CODE.sub("", text)
    return text.translate(_SHOWN)


def plain(text: object, style: str = "") -> Text:
    """Server text as a rich ``Text`` in ``style``: shown, never read as markup."""
    return Text(visible(str(text)), style=style)
