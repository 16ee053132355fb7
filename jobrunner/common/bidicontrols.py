"""The bidirectional embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069).

Shown, they reorder the text around them: an artifact ``invoice<U+202E>fdp.exe`` reads
"invoiceexe.pdf", a batch named ``b<U+202E>idi`` reads "bidi" with what follows it turned around.
No name or reason needs them, so text an operator or a tool names things with refuses them as it
refuses control characters. The marks U+200E/U+200F and the joiners, which some scripts do need,
reorder nothing on their own and stay allowed.
"""

from __future__ import annotations

import re

# As a character class's body, for patterns that refuse them beside other characters.
CLASS = "\u202a-\u202e\u2066-\u2069"
_ANY = re.compile(f"[{CLASS}]")
# For sentences: which characters are meant, in the notation people search for.
NAMED = "bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069)"


def isolated(text: str) -> str:
    """``text`` for plain text no element can isolate (a page's ``<title>``, an ``aria-label`` a
    screen reader reads): its own such characters dropped, then wrapped in FIRST STRONG ISOLATE
    ... POP DIRECTIONAL ISOLATE, so it cannot turn the text after it around. The same as the web
    UI's ``isolated`` (static/js/text.js), so a page reads alike before and after its script."""
    return f"\u2068{_ANY.sub('', text)}\u2069"


def first_in(text: str) -> str | None:
    """The first such character in ``text`` as ``U+202E``, or None when it holds none."""
    found = _ANY.search(text)
    return None if found is None else f"U+{ord(found.group()):04X}"
