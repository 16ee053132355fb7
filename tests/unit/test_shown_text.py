"""What the terminal commands make of server text before a terminal sees it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from jobrunner.common.terminaltext import visible
from jobrunner.terminal.shown_text import plain


def test_colour_codes_are_dropped_and_the_words_kept() -> None:
    """A tool's own colours go (the client colours by level); its words stay."""
    assert visible("\x1b[1;31mERROR\x1b[0m disk full") == "ERROR disk full"


def test_escape_sequences_an_older_runner_kept_are_shown_not_sent() -> None:
    """ESC c (reset), ESC ( 0 (line drawing) and an 8-bit CSI, in a log stored before session
    39, become visible symbols."""
    assert visible("a\x1bcb") == "a\u241bcb"
    assert visible("\x1b(0q") == "\u241b(0q"
    assert visible("\u009b2J") == "\\x9b2J"


def test_a_c1_control_is_told_apart_from_an_undecodable_byte() -> None:
    """An 8-bit CSI shows as \\x9b, not as the U+FFFD the runner writes for a byte that is not
    UTF-8 (both were U+FFFD)."""
    assert visible("\u0085 \u009b \ufffd") == "\\x85 \\x9b \ufffd"


def test_bidi_overrides_are_shown_not_obeyed() -> None:
    """A right-to-left override (U+202E) and the isolates cannot make a line read otherwise than
    it is (Trojan Source): they show as their escapes."""
    assert visible("ok \u202eevil\u202c") == "ok \\u202eevil\\u202c"
    assert visible("\u2066\u2067\u2068\u2069") == "\\u2066\\u2067\\u2068\\u2069"
    assert visible("\u202a\u202b\u202d") == "\\u202a\\u202b\\u202d"


def test_tabs_and_ordinary_text_are_left_as_they_are() -> None:
    """A tab, umlauts and U+2028 are text, not controls."""
    assert visible("a\tb äöü \u2028 ␀") == "a\tb äöü \u2028 ␀"


@given(st.text())
def test_no_control_character_is_ever_left(text: str) -> None:
    """Whatever the server sends, no C0 control but tab, no DEL, no C1 control and no bidi
    override is left."""
    shown = visible(text)
    assert not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) < 0xA0 for c in shown)
    assert not any(0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069 for c in shown)


def test_server_text_is_never_read_as_markup() -> None:
    """A result holding "[/data/out] [red]x" printed on a terminal, markup on, comes out as
    written (a string raised a MarkupError, or "[red]" was swallowed)."""
    console = Console(force_terminal=True, color_system="standard", width=200)
    with console.capture() as captured:
        console.print(plain("5 files in [/data/out] [red]x :smile:"), markup=True)
    assert "5 files in [/data/out] [red]x :smile:" in captured.get()
