"""What the terminal client makes of server text before a terminal sees it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobrunner.terminal.shown_text import plain, visible


def test_colour_codes_are_dropped_and_the_words_kept() -> None:
    """A tool's own colours go (the client colours by level); its words stay."""
    assert visible("\x1b[1;31mERROR\x1b[0m disk full") == "ERROR disk full"


def test_escape_sequences_the_runner_keeps_are_shown_not_sent() -> None:
    """ESC c (reset), ESC ( 0 (line drawing) and an 8-bit CSI become visible symbols."""
    assert visible("a\x1bcb") == "a\u241bcb"
    assert visible("\x1b(0q") == "\u241b(0q"
    assert visible("\u009b2J") == "\ufffd2J"


def test_tabs_and_ordinary_text_are_left_as_they_are() -> None:
    """A tab, umlauts and U+2028 are text, not controls."""
    assert visible("a\tb äöü \u2028 ␀") == "a\tb äöü \u2028 ␀"


@given(st.text())
def test_no_control_character_is_ever_left(text: str) -> None:
    """Whatever the server sends, no C0 control but tab, no DEL and no C1 control is left."""
    shown = visible(text)
    assert not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) < 0xA0 for c in shown)


@given(st.text())
def test_server_text_is_never_read_as_markup(text: str) -> None:
    """A line holding "[/data/out]" or "[red]" is printed as written, never read as markup
    (which raised a MarkupError or swallowed the brackets)."""
    assert plain(text).plain == visible(text)
