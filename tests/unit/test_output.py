"""A tool's output as log lines: levels, progress, results, escapes, carriage returns, splitting."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.services.runner.output import (
    SPLIT_MARKER,
    LineSplitter,
    clean_text,
    parse_level,
    parse_progress,
    parse_result,
    without_colours,
)

# --- levels


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("ERROR: DATEV unreachable", "ERROR"),
        ("  [WARN] slow answer", "WARNING"),
        ("2025-12-27 12:15:00,123 ERROR z", "ERROR"),
        ("2025-12-27T12:15:00Z WARNING z", "WARNING"),
        ("[12:15:00] SUCCESS 89 Websites gefunden", "SUCCESS"),
        ("12:15:00.5 debug detail", "DEBUG"),
        ("(fatal) disk full", "ERROR"),
        ("CRITICAL| x", "ERROR"),
        ("info - started", "INFO"),
        ("WARNING", "WARNING"),
    ],
)
def test_level_is_read_where_tools_put_it(text: str, level: str) -> None:
    """A level at the line start, or after a timestamp, in any case or bracket, is recognised."""
    assert parse_level(text) == level


@pytest.mark.parametrize(
    "text", ["Found 3 ERROR pages", "ERRORS: 0", "INFORMATION follows", "", "x" * 500 + " ERROR"]
)
def test_level_words_elsewhere_are_not_levels(text: str) -> None:
    """A level word inside the text, or as part of a longer word, leaves the default level."""
    assert parse_level(text, default="INFO") == "INFO"


def test_stderr_default_level_is_kept_without_a_level_word() -> None:
    """A line without a level keeps the default its stream gives it."""
    assert parse_level("Traceback (most recent call last):", default="ERROR") == "ERROR"


def test_job_type_level_pattern_replaces_the_default() -> None:
    """A job type's level_pattern decides the level; an unknown level word keeps the default."""
    pattern = re.compile(r"^<(?P<level>\w+)>")
    assert parse_level("<warn> x", pattern=pattern) == "WARNING"
    assert parse_level("<notice> x", default="INFO", pattern=pattern) == "INFO"
    assert parse_level("ERROR x", default="INFO", pattern=pattern) == "INFO"


@settings(deadline=None)
@given(st.text(max_size=300))
def test_any_line_gets_a_known_level(text: str) -> None:
    """Whatever a tool prints, its line gets one of the five levels the UI knows."""
    assert parse_level(text) in {"DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"}


# --- progress


@pytest.mark.parametrize(
    ("text", "current", "total", "percent"),
    [
        ("[42/127] Müller GmbH", 42, 127, 33.1),
        ("  [ 3 / 4 ] x", 3, 4, 75.0),
        ("done [127/127]", 127, 127, 100.0),
        ("[0/5]", 0, 5, 0.0),
    ],
)
def test_bracketed_count_is_progress(text: str, current: int, total: int, percent: float) -> None:
    """[i/N] anywhere in a line reports i of N and the percentage."""
    progress = parse_progress(text)
    assert progress is not None
    assert (progress.current, progress.total, progress.percent) == (current, total, percent)


@pytest.mark.parametrize("text", ["[0/0]", "[5/0]", "42/127", "[a/b]", "no progress"])
def test_lines_without_a_count_are_no_progress(text: str) -> None:
    """A line without a usable [i/N] (or [0/0]) reports no progress."""
    assert parse_progress(text) is None


def test_custom_pattern_with_percent() -> None:
    """A job type's progress_pattern may give a percentage alone."""
    progress = parse_progress("download 12.5%", re.compile(r"(?P<percent>\d+(?:\.\d+)?)%"))
    assert progress is not None
    assert (progress.current, progress.percent) == (None, 12.5)


def test_progress_percentage_stays_within_0_and_100() -> None:
    """A tool that counts past its total shows 100 %, never more."""
    progress = parse_progress("[200/100]")
    assert progress is not None
    assert progress.percent == 100.0


@pytest.mark.parametrize(
    "text", ["[2147483648/1]", "[1/99999999999999999999]", "[" + "9" * 400 + "/1]"]
)
def test_count_too_large_to_store_is_no_progress(text: str) -> None:
    """A count larger than the job's progress can hold is logged as text, not reported."""
    assert parse_progress(text) is None


def test_custom_percent_over_100_is_clamped() -> None:
    """A percentage over 100 from a job type's pattern shows as 100 %."""
    progress = parse_progress("at 250%", re.compile(r"(?P<percent>\d+)%"))
    assert progress is not None
    assert progress.percent == 100.0


def test_negative_count_from_a_custom_pattern_is_no_progress() -> None:
    """A job type's pattern that captures "-5" as the count reports no progress."""
    assert parse_progress("item -5", re.compile(r"item (?P<current>-?\d+)")) is None


@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_custom_percent_that_is_no_number_is_no_progress(raw: str) -> None:
    """A pattern that captures 'nan' or 'inf' as the percentage reports no progress."""
    assert parse_progress(f"at {raw}%", re.compile(r"(?P<percent>[a-z]+)%")) is None


PROGRESS_LINES = st.one_of(
    st.text(max_size=100),
    st.from_regex(r"\A\[ ?[0-9]{1,500} ?/ ?[0-9]{1,500}\]\Z"),
)


@settings(deadline=None)
@given(PROGRESS_LINES)
def test_any_line_gives_no_progress_or_a_percentage_in_range(text: str) -> None:
    """Whatever a tool prints, a progress it reports is between 0 and 100 %."""
    progress = parse_progress(text)
    assert progress is None or progress.percent is None or 0.0 <= progress.percent <= 100.0


# --- results


def test_result_groups_become_fields_and_numbers_numbers() -> None:
    """Named groups of a result_pattern are the result's fields; digits become numbers."""
    pattern = re.compile(r"SUCCESS (?P<found>\d+) Websites gefunden, (?P<missing>\d+) ohne")
    result = parse_result("SUCCESS 89 Websites gefunden, 38 ohne Ergebnis ", pattern)
    assert result == {
        "found": 89,
        "missing": 38,
        "summary": "SUCCESS 89 Websites gefunden, 38 ohne Ergebnis",
    }


def test_result_summary_group_wins_over_the_whole_line() -> None:
    """A group named summary is the summary; an unmatched optional group is left out."""
    pattern = re.compile(r"DONE (?P<summary>.+?)(?: \((?P<note>.*)\))?$")
    assert parse_result("DONE all fine", pattern) == {"summary": "all fine"}


def test_result_integer_up_to_15_digits_is_a_number() -> None:
    """A count of up to 15 digits (exact in every JSON reader, JavaScript included) is a number."""
    result = parse_result("n=999999999999999", re.compile(r"n=(?P<n>\d+)"))
    assert result is not None
    assert result["n"] == 999_999_999_999_999


def test_line_not_matching_is_no_result() -> None:
    """A line the result_pattern does not match is no result."""
    assert parse_result("working", re.compile(r"DONE")) is None


@pytest.mark.parametrize("value", ["²", "٣", "1" * 5000, "9007199254740993", "01067"])
def test_result_number_that_is_not_a_plain_integer_stays_text(value: str) -> None:
    """Digits that are no plain integer (², ٣, past 2^53, a postcode 01067) stay as printed."""
    result = parse_result(f"n={value}", re.compile(r"n=(?P<n>\S+)"))
    assert result is not None
    assert result["n"] == value


RESULT_VALUES = st.one_of(
    st.text(max_size=50),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=30),
    st.from_regex(r"\A[0-9]{15,5000}\Z"),
)


@settings(deadline=None)
@given(RESULT_VALUES)
def test_any_result_value_is_kept(value: str) -> None:
    """Whatever a result group captures, it is kept as a number or as the text itself."""
    result = parse_result(f"n={value}", re.compile(r"n=(?P<n>.*)", re.DOTALL))
    assert result is not None
    assert result["n"] == value or (isinstance(result["n"], int) and str(result["n"]) == value)


# --- cleaning one line


def test_invalid_utf8_and_nul_are_replaced_not_dropped() -> None:
    """Bytes that are not UTF-8 show as U+FFFD and NUL as ␀, so nothing silently disappears."""
    assert clean_text(b"caf\xe9\x00ok") == "caf\ufffd␀ok"


def test_colours_are_kept_other_escapes_removed() -> None:
    """Colour codes stay for the UI to render; cursor moves and window titles are removed."""
    raw = b"\x1b[1;31mred\x1b[0m\x1b[2K\x1b]0;title\x07 done\x1b[A"
    assert clean_text(raw) == "\x1b[1;31mred\x1b[0m done"


def test_without_colours_is_what_a_reader_sees() -> None:
    """Levels and progress are read from the text without its colour codes."""
    assert without_colours("\x1b[33mWARNING\x1b[0m x") == "WARNING x"
    assert parse_level(without_colours("\x1b[31mERROR\x1b[0m x")) == "ERROR"


def test_carriage_return_keeps_the_last_state() -> None:
    """Of a progress bar redrawn with \\r, the line keeps what a terminal shows last."""
    assert clean_text(b"10%\r50%\r100% done") == "100% done"
    assert clean_text(b"working\r") == "working"
    assert clean_text(b"\r\r") == ""


# --- splitting a stream into lines


def feed_all(splitter: LineSplitter, chunks: list[bytes]) -> list[str]:
    lines: list[str] = []
    for chunk in chunks:
        lines += splitter.feed(chunk)
    return lines + splitter.close()


def test_lines_are_split_on_newline_across_chunks() -> None:
    """A line that arrives in pieces is one line; the unterminated rest comes at the end."""
    assert feed_all(LineSplitter(1024), [b"one\ntw", b"o\nthr", b"ee"]) == ["one", "two", "three"]


def test_windows_line_endings_leave_no_carriage_return() -> None:
    """\\r\\n ends a line like \\n; no stray \\r reaches the log."""
    assert feed_all(LineSplitter(1024), [b"a\r\nb\r\n"]) == ["a", "b"]


def test_progress_bar_state_is_transient_not_a_line() -> None:
    """A bar redrawing itself with \\r updates the transient state without logging each frame."""
    splitter = LineSplitter(1024)
    assert splitter.feed(b"[1/3]\r[2/3]\r") == []
    assert splitter.transient == "[2/3]"
    assert splitter.feed(b"[3/3] done\n") == ["[3/3] done"]


def test_long_line_is_split_into_marked_pieces() -> None:
    """A line over max_bytes is cut into pieces, each but the last marked ↩."""
    lines = feed_all(LineSplitter(64), [b"x" * 150 + b"\n"])
    assert lines == ["x" * 64 + SPLIT_MARKER, "x" * 64 + SPLIT_MARKER, "x" * 22]


def test_split_never_cuts_a_character_in_half() -> None:
    """A cut lands between UTF-8 characters, so no piece shows U+FFFD."""
    lines = feed_all(LineSplitter(64), ["ä".encode() * 100 + b"\n"])
    assert "".join(line.removesuffix(SPLIT_MARKER) for line in lines) == "ä" * 100


@settings(deadline=None)
@given(st.lists(st.sampled_from([b"a", b"\xc3\xa4", b"\n", b"\r", b"\x1b[1m", b"\x00", b"\xff"])))
def test_line_length_is_bounded_whatever_the_tool_prints(pieces: list[bytes]) -> None:
    """No line is longer than max_bytes (plus the marker), however the tool writes."""
    splitter = LineSplitter(64)
    for line in feed_all(splitter, [b"".join(pieces)]):
        assert len(line.removesuffix(SPLIT_MARKER).encode()) <= 64 * 3


def test_empty_redraw_before_the_line_ends_keeps_the_text() -> None:
    """'a\\r\\r' then '\\n' in two reads logs 'a', as when the same bytes arrive in one read."""
    splitter = LineSplitter(1024)
    assert splitter.feed(b"a\r\r") == []
    assert splitter.feed(b"\n") == ["a"]


OUTPUT_PIECES = st.lists(
    st.sampled_from(
        [b"a", b"\xc3\xa4", b"\n", b"\r", b"\r\n", b"\x1b[1m", b"\x00", b"\xff", b"[1/3]"]
    ),
    max_size=60,
)


@settings(deadline=None)
@given(OUTPUT_PIECES, st.data())
def test_lines_do_not_depend_on_how_the_pipe_splits_the_output(
    pieces: list[bytes], data: st.DataObject
) -> None:
    """The same output gives the same lines however the pipe happens to cut it into reads."""
    whole = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=8)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    assert feed_all(LineSplitter(1024), chunks) == feed_all(LineSplitter(1024), [whole])


def test_endless_redraws_without_text_hold_no_memory() -> None:
    """A tool printing only \\r for ever keeps the buffer small and logs no empty lines."""
    splitter = LineSplitter(64)
    for _ in range(1000):
        assert splitter.feed(b"\r" * 7) == []
    assert splitter.feed(b"a\r" + b"\r" * 500) == []
    assert splitter.feed(b"\n") == ["a"]
