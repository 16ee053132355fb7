"""A line is stored the same way whether a tool printed it (the runner) or an external job's
worker reported it (the API): one cleaning for both, so a worker's colour codes, escape
sequences and control characters fare as a tool's do."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from jobrunner.services.api.reports import ReportedLine, split_lines
from jobrunner.services.runner.output import LineSplitter

# Where sequences begin, end and are cut short, controls, line breaks, and text around them.
PIECES = st.sampled_from(
    [
        "\x1b", "[", "]", "P", "X", "^", "_", "\\", "(", "#", " ", "0", "2", ";", "?", "m", "J",
        "c", "7", "\x07", "\x08", "\x0b", "\x0c", "\t", "\r", "\n", "\x00", "\x7f", "\x18",
        "\u009b", "\u009c", "\u009d", "\u0090", "\u0085", "ä", "a", "°", "\x1b[31m", "\x1b[0m",
        "\x1b]0;t\x07", "\x1b]8;;http://x\x1b\\", "\x1b[2K", "\u202e",
    ]
)  # fmt: skip
TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=80),
    st.lists(PIECES, max_size=40).map("".join),
)


def printed_by_a_tool(text: str) -> list[str]:
    """The lines the runner stores of a tool that printed ``text`` and a line break."""
    splitter = LineSplitter(64 * 1024)
    return splitter.feed(text.encode() + b"\n") + splitter.close()


def reported_by_a_worker(text: str) -> list[str]:
    """The lines the API stores of a report whose one line's text is ``text``."""
    return [line.text for line in split_lines([ReportedLine(text=text)])]


@example("\x1b[31mred\x1b[0m and \x1b[2Jcleared")  # a colour kept, an erase removed whole
@example("a\u009b2Jb\x1b]0;title\x07c")  # an 8-bit CSI, an OSC title
@example("bell\x07 back\x08space\x00")  # C0 kept, NUL shown
@example("cut short\x1b]0;never ended")  # a string never ended
@example("10%\r50%\r100%\r\n")  # a progress bar, a CRLF line end
@given(TEXT)
def test_a_reported_line_is_stored_as_the_same_printed_line(text: str) -> None:
    """Whatever the text, a worker reporting it stores the lines a tool printing it would. Only
    the cleaning: a runner also splits a line over its ``max_line_bytes`` into marked pieces, a
    report's line is not split (its text, at most 16,384 characters, is at most 64 KiB of UTF-8,
    the default ``max_line_bytes``; the API has no setting of its own), so the runner here has
    that default and the texts are far shorter."""
    assert reported_by_a_worker(text) == printed_by_a_tool(text)


def test_a_reported_colour_code_is_kept_whole_not_left_as_text() -> None:
    """``ESC [31m`` in a worker's line is a colour code, not ``[31m`` text (as it once was)."""
    assert reported_by_a_worker("\x1b[31mERROR\x1b[0m disk \x1b[2Kfull") == [
        "\x1b[31mERROR\x1b[0m disk full"
    ]
