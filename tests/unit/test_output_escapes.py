"""What the runner keeps of the escape sequences and control characters in a tool's output:
colour codes, no other ECMA-48 escape sequence, no C1 control; the C0 controls (tab, BEL, BS,
...) stay as printed, NUL is shown as a symbol."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from jobrunner.services.runner.bounds import clean_field
from jobrunner.services.runner.output import SPLIT_MARKER, LineSplitter, clean_text, split_line

COLOUR_CODE = re.compile(r"\x1b\[[0-9;]*m")


def obeyed(text: str) -> list[str]:
    """What the runner removes that is left in ``text`` once its whole colour codes are taken
    out: ESC, C1 controls."""
    rest = COLOUR_CODE.sub("", text)
    return [c for c in rest if c == "\x1b" or 0x80 <= ord(c) < 0xA0]


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        pytest.param(b"a\x1bcb", "ab", id="Fs: ESC c, a full reset"),
        pytest.param(b"\x1b7a\x1b8b\x1b=\x1b>", "ab", id="Fp: cursor saved and restored, keypad"),
        pytest.param(b"\x1b(0lqk\x1b(B", "lqk", id="nF: line-drawing glyphs on and off"),
        pytest.param(b"\x1b#8x\x1b%G", "x", id="nF: screen alignment test, UTF-8 mode"),
        pytest.param(b"a\x1bDb\x1bMc\x1bEd", "abcd", id="Fe: index, reverse index, next line"),
        pytest.param(b"\x1b[2J\x1b[H\x1b[?25lx\x1b[2 q", "x", id="CSI: clear, home, cursor"),
        pytest.param(b"\x1b]0;title\x07text", "text", id="OSC ended by BEL"),
        pytest.param(b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link", id="OSC ended by ST"),
        pytest.param(b"\x1bPq#0;2;0;0;0#0!6~\x1b\\after", "after", id="DCS: a sixel image"),
        pytest.param(b"\x1bXsos\x1b\\a\x1b^pm\x1b\\b\x1b_apc\x1b\\c", "abc", id="SOS PM APC"),
        pytest.param(b"before\x1b]0;never ended", "before", id="a string unended to the end"),
        pytest.param(b"\x1b]0;t\x1b[31mred", "\x1b[31mred", id="an ESC not ST ends a string"),
        pytest.param(b"\x1bPq#0\x07sixel\x1b\\end", "end", id="BEL does not end a DCS"),
        pytest.param("\u0090q\x07sixel\u009cend".encode(), "end", id="nor an 8-bit DCS"),
        pytest.param("\u009d0;t\x07end".encode(), "end", id="BEL ends an 8-bit OSC"),
        pytest.param(b"x\x1bPq\rA\rB\x1b\\", "B", id="a carriage return ends a string"),
        pytest.param(b"\x1b]0;t\x18a\x1bPq\x1ab", "\x18a\x1ab", id="CAN and SUB cancel one"),
        pytest.param(b"done\x1b", "done", id="a lone ESC at the line's end"),
        pytest.param(b"done\x1b[3", "done", id="a CSI cut short by the line's end"),
        pytest.param(b"a\x1b\x1bcb", "ab", id="ESC ESC: the second one begins ESC c"),
        pytest.param("\u009b2Jtext".encode(), "text", id="C1: 8-bit CSI clearing the screen"),
        pytest.param("\u009d0;t\u009cx".encode(), "x", id="C1: 8-bit OSC ended by 8-bit ST"),
        pytest.param("\u0090q\u009cx\u009fapc\x07".encode(), "x", id="C1: 8-bit DCS, APC"),
        pytest.param("a\u0085b\u0084c\u009cd".encode(), "abcd", id="C1: NEL, IND, a lone ST"),
        pytest.param(b"ding\x07 a\x08b\x0b\x0c\x7f", "ding\x07 a\x08b\x0b\x0c\x7f", id="C0 stays"),
        pytest.param(b"a\tb", "a\tb", id="TAB is text"),
        pytest.param(b"\x1b[1;31mred\x1b[0m", "\x1b[1;31mred\x1b[0m", id="SGR colours kept"),
        pytest.param(b"a\x00b", "a\u2400b", id="NUL shown as a symbol"),
    ],
)
def test_each_kind_of_sequence_is_removed_colours_kept(raw: bytes, kept: str) -> None:
    """Each ECMA-48 sequence and control a tool may print, as the runner stores it."""
    assert clean_text(raw) == kept


def test_a_progress_bar_redrawn_with_escape_codes_keeps_its_last_state() -> None:
    """Carriage returns still keep a bar's last state once the erase codes around it are gone."""
    assert clean_text(b"\x1b[2K[1/3]\r\x1b[2K\x1b[32m[3/3]\x1b[0m") == "\x1b[32m[3/3]\x1b[0m"


# Bytes where the sequences begin, end and are cut short, and text around them.
PIECES = st.sampled_from(
    [
        b"\x1b", b"[", b"]", b"P", b"X", b"^", b"_", b"\\", b"(", b"#", b" ", b"0", b"2", b";",
        b"?", b"m", b"J", b"c", b"7", b"\x07", b"\x08", b"\x0b", b"\t", b"\r", b"\x00", b"\x7f",
        "\u009b".encode(), "\u009c".encode(), "\u009d".encode(), "\u0090".encode(), b"\xc2",
        b"\xff", "ä".encode(), b"a", b"\x1b[31m", b"\x1b[0m", b"\x1b]0;t\x07",
    ]
)  # fmt: skip
OUTPUT = st.one_of(st.binary(max_size=80), st.lists(PIECES, max_size=40).map(b"".join))


@given(OUTPUT)
def test_no_sequence_or_control_survives_but_whole_colour_codes(raw: bytes) -> None:
    """Whatever a line holds, the stored text has no ESC but in whole colour codes, and no C1
    control."""
    assert obeyed(clean_text(raw)) == []


@given(OUTPUT)
def test_cleaning_twice_changes_nothing(raw: bytes) -> None:
    """A cleaned line is clean: cleaning it again leaves it as it is."""
    once = clean_text(raw)
    assert clean_text(once.encode()) == once


PLAIN = st.text(st.characters(blacklist_categories=("Cc", "Cs")))


KEPT = st.sampled_from(["\x1b[1m", "\x1b[0m", "\x1b[38;5;208m", "\t", "\x07", "\x08", "\x7f"])


@given(PLAIN, st.lists(KEPT))
def test_text_without_sequences_is_stored_as_printed(text: str, colours: list[str]) -> None:
    """Text (any script, format characters included) with colour codes, tabs, BEL and BS is
    kept as the tool printed it."""
    line = "".join(colours) + text + "".join(colours)
    assert clean_text(line.encode()) == line


# Where strings begin and end (a carriage return and a line break end an unended one), text, and
# the UTF-8 bytes of an 8-bit OSC and CSI, which a read can cut in two.
READ_PIECES = st.sampled_from(
    [
        b"\x1b]0;t", b"\x1bPq", b"\x07", b"\x1b\\", b"\r", b"A", b"B", b"\x1b[2K", b"\x1b[31m",
        "\u009d".encode(), "\u009b2J".encode(), b"\x1b", b"\n",
    ]
)  # fmt: skip


def lines_read(output: bytes, cuts: list[int]) -> list[str]:
    """The lines a runner stores of ``output`` read from the pipe in pieces cut at ``cuts``."""
    splitter = LineSplitter(4096)
    lines: list[str] = []
    start = 0
    for cut in sorted(set(cuts)):
        lines += splitter.feed(output[start:cut])
        start = max(start, cut)
    return lines + splitter.feed(output[start:]) + splitter.close()


@example(b"\x1b]0;t\rA\rB\n", [8])  # an unended title, then a progress bar
@example(b"x\x1bPq\rA\rB\x1b\\\n", [8])  # an unended DCS, then a progress bar
@example(b"a\x1b]0;title\x07b\x1b[2Jc\xc2\x9b2Jd\n", [7, 14, 18])  # C1 cut in its UTF-8
@example(b"A\r\x1b[2K\r\n", [5])  # a redraw that only erases leaves the state before it
@example(b"\x1b[31m\r\x1b]0;t\r\n", [12])  # a redraw that only sets a title, too
@settings(max_examples=1000, deadline=None)
@given(st.lists(READ_PIECES, max_size=12).map(b"".join), st.lists(st.integers(0, 40), max_size=4))
def test_where_the_pipe_reads_fall_changes_no_line(output: bytes, cuts: list[int]) -> None:
    """The runner reads the pipe in chunks: a sequence cut between two reads goes whole, and
    the stored lines are those of the output read at once, however the reads were cut."""
    assert lines_read(output, cuts) == lines_read(output, [])


def test_a_colour_code_at_a_long_lines_cut_goes_whole_into_the_next_piece() -> None:
    """A line longer than the cap is cut into pieces: a colour code at the cut is not cut in
    two (its ESC removed from one piece, "31m" shown in the next), it starts the next piece."""
    line = b"x" * 60 + b"\x1b[31mred\x1b[0m" + b"y" * 60
    pieces = split_line(line, 64)
    assert pieces[0] == "x" * 60 + SPLIT_MARKER
    assert pieces[1].startswith("\x1b[31mred\x1b[0m")
    assert "".join(p.removesuffix(SPLIT_MARKER) for p in pieces) == line.decode()


def test_a_long_colour_code_at_a_cut_goes_whole_into_the_next_piece() -> None:
    """A colour code for style, foreground, background and underline (over 32 bytes), begun
    45 bytes before the cut, is not shown as text either."""
    colour = b"\x1b[1;4;38;2;255;128;0;48;2;0;128;255;58;2;10;20;30m"
    assert len(colour) > 45
    pieces = split_line(b"x" * 83 + colour + b"orange" + b"y" * 100, 128)
    assert pieces[0] == "x" * 83 + SPLIT_MARKER
    assert pieces[1].startswith(colour.decode() + "orange")


def test_a_link_cut_across_pieces_keeps_its_text_and_shows_no_address() -> None:
    """A terminal hyperlink (OSC 8) whose address the cut falls in goes whole into the next
    piece: its text is kept, no part of its address is shown."""
    link = b"\x1b]8;;https://example.org/build/42\x1b\\the build\x1b]8;;\x1b\\"
    pieces = split_line(b"x" * 40 + link + b"y" * 60, 64)
    shown = "".join(p.removesuffix(SPLIT_MARKER) for p in pieces)
    assert shown == "x" * 40 + "the build" + "y" * 60


@given(st.lists(OUTPUT, max_size=8), st.integers(64, 100))
def test_no_piece_of_any_output_holds_a_sequence(chunks: list[bytes], max_bytes: int) -> None:
    """Output in any reads, with lines longer than the cap cut into pieces: no piece, and no
    progress bar's state, holds an ESC but in whole colour codes, or a C1 control."""
    splitter = LineSplitter(max_bytes)
    shown: list[str] = []
    for chunk in chunks:
        shown += splitter.feed(chunk * 3)
        shown.append(splitter.transient or "")
    shown += splitter.close()
    assert [obeyed(text) for text in shown if obeyed(text)] == []


def test_a_field_loses_a_whole_8_bit_sequence() -> None:
    """A progress phase or result text loses an 8-bit CSI with its parameters, not only its
    first character (a "2J" was left)."""
    assert clean_field("\u009b2Jphase\x1bc", 200) == "phase"


def test_a_field_keeps_the_text_after_an_unended_title_on_the_next_line() -> None:
    """An error message whose first line ends in an unended title sequence keeps its next
    line: the line break ends the sequence, then becomes a space."""
    message = "RuntimeError: \x1b]0;title\nreal cause: disk full"
    assert clean_field(message, 200) == "RuntimeError:  real cause: disk full"
    assert clean_field("a\u0085b", 200) == "a b"  # NEL is a line break, not a sequence
