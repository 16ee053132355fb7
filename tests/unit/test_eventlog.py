"""``jobrunner events``: reading ``--since`` and showing one stored event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.common.audit import StoredEvent
from jobrunner.common.eventlog import json_line, parse_since, readable

NOW = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)


def test_since_absent_means_from_the_start() -> None:
    """Without --since the history starts at its beginning."""
    assert parse_since(None) == (None, None)


def test_since_a_number_is_a_stream_sequence() -> None:
    """--since 1234 starts at stream sequence 1234."""
    assert parse_since(" 1234 ") == (1234, None)


@pytest.mark.parametrize(
    ("raw", "delta"),
    [
        ("30s", timedelta(seconds=30)),
        ("15m", timedelta(minutes=15)),
        ("1.5h", timedelta(hours=1.5)),
        ("2d", timedelta(days=2)),
    ],
)
def test_since_an_age_counts_back_from_now(raw: str, delta: timedelta) -> None:
    """--since 15m starts fifteen minutes ago."""
    assert parse_since(raw, now=NOW) == (None, NOW - delta)


def test_since_an_iso_time_with_z_is_utc() -> None:
    """--since 2026-01-31T11:00:00Z is that moment in UTC."""
    assert parse_since("2026-01-31T11:00:00Z") == (None, datetime(2026, 1, 31, 11, tzinfo=UTC))


def test_since_an_iso_time_without_zone_is_utc() -> None:
    """A time without a zone is read as UTC, not the machine's local time."""
    assert parse_since("2026-01-31T11:00") == (None, datetime(2026, 1, 31, 11, tzinfo=UTC))


def test_since_a_time_with_an_offset_is_read_as_the_same_instant_in_utc() -> None:
    """12:00 at +01:00 is 11:00 UTC, the zone a stream consumer's start time is given in."""
    _, at = parse_since("2026-01-31T12:00:00+01:00")
    assert at == datetime(2026, 1, 31, 11, tzinfo=UTC)
    assert at is not None
    assert at.tzinfo is UTC


@pytest.mark.parametrize(
    "raw",
    [
        "yesterday",
        "15 minutes",
        "-5",
        "5w",
        "",
        "²",
        "9999999d",
        "1000000000d",
        "9" * 5000,
    ],
)
def test_since_anything_else_is_a_clear_error(raw: str) -> None:
    """A --since that is neither a sequence, a time nor an age says what it accepts."""
    with pytest.raises(ValueError, match="stream sequence, an ISO 8601 time or an age"):
        parse_since(raw)


def stored(event: object) -> StoredEvent:
    return StoredEvent(
        stream_seq=42,
        subject="jobrunner.job.j1.status",
        time=datetime(2026, 1, 31, 12, 0, 1, 234567, tzinfo=UTC),
        event=event,
    )


def test_readable_shows_sequence_time_job_type_and_fields() -> None:
    """The readable form shows sequence, time to the millisecond, job, type and set fields."""
    event = {
        "type": "StatusChanged",
        "job_id": "j1",
        "event_id": "e",
        "version": 1,
        "status": "failed",
        "exit_code": 3,
        "error": {"code": "EXIT_NONZERO"},
        "result": None,
    }
    assert readable(stored(event)) == (
        "#42      2026-01-31 12:00:01.234  j1  StatusChanged  status=failed exit_code=3 "
        'error={"code":"EXIT_NONZERO"}'
    )


def test_readable_shows_lines_below_the_event() -> None:
    """Each line of a LineLogged event is shown on its own row under the event."""
    event = {
        "type": "LineLogged",
        "job_id": "j1",
        "lines": [[1, "stdout", "INFO", "2026-01-31T12:00:00Z", "hello"]],
    }
    shown = readable(stored(event)).splitlines()
    assert shown[0].endswith("j1  LineLogged")
    assert shown[1].split() == ["1", "stdout", "INFO", "hello"]


def test_readable_survives_an_event_that_is_not_an_object() -> None:
    """A stored message that is not a JSON object is still shown, with type '?'."""
    assert readable(stored([1, 2])).endswith("?")


def test_json_line_is_the_stored_event_as_one_json_object() -> None:
    """--json prints one JSON object per line, with the event exactly as stored."""
    line = json_line(stored({"type": "Future", "x": 1}))
    assert "\n" not in line
    assert msgspec.json.decode(line)["event"] == {"type": "Future", "x": 1}


# Any text a stored event can hold (it was JSON: no lone surrogate), with what a terminal would
# obey among it (C0, C1, bidi overrides) likely.
TEXT_WITH_CONTROLS = st.text(
    st.characters(exclude_categories=["Cs"])
    | st.characters(min_codepoint=0x80, max_codepoint=0x9F)
    | st.sampled_from("\x1b\u202e\u2066")
)


@settings(deadline=None)
@given(
    st.dictionaries(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=5), TEXT_WITH_CONTROLS
    )
)
def test_json_line_holds_nothing_a_terminal_would_obey_and_the_same_value(event: object) -> None:
    """--json on a terminal: C1 controls (U+009B, a CSI) and bidi overrides are written as their
    JSON escapes like the C0 ones, and a program reading the line gets the event as stored."""
    line = json_line(stored(event))
    assert not [c for c in line if ord(c) < 0x20 or 0x7F < ord(c) < 0xA0]
    assert not [c for c in line if 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069]
    assert msgspec.json.decode(line)["event"] == event


def test_json_line_escapes_an_8_bit_csi_and_a_bidi_override() -> None:
    """The escapes a reader of the raw JSON sees where a terminal would have obeyed."""
    line = json_line(stored({"type": "LineLogged", "job_id": "j\u202e1", "x": "\u009b2J"}))
    assert '"job_id":"j\\u202e1"' in line
    assert '"x":"\\u009b2J"' in line


SINCE = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\A[0-9]{1,25}(\.[0-9]{1,3})?[smhd]\Z"),
    st.from_regex(r"\A[0-9]{1,5000}\Z"),
)


@settings(deadline=None)
@given(SINCE)
def test_any_since_is_read_or_refused_with_a_sentence(raw: str) -> None:
    """Whatever is typed after --since, it is read or refused with the usual sentence."""
    try:
        parse_since(raw, now=NOW)
    except ValueError as exc:
        message = str(exc)
    else:
        return
    assert "--since" in message


# Text with what a terminal would obey among it: ESC, BEL, an 8-bit CSI, a bidi override.
TEXT = st.text(st.characters() | st.sampled_from("\x1b\x07\u009b\u202e"), max_size=5)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@settings(deadline=None)
@given(
    st.dictionaries(st.sampled_from(["type", "job_id", "lines", "status", "x"]), JSON)
    | st.fixed_dictionaries({"lines": st.lists(st.lists(TEXT, min_size=5, max_size=5))})
    | JSON
)
def test_any_stored_event_can_be_shown(event: object) -> None:
    """Whatever a stored message holds (odd lines included), jobrunner events shows it, with no
    character a terminal would obey (but the line breaks between its rows)."""
    shown = readable(stored(event))
    assert shown.startswith("#42")
    obeyed = [c for c in shown if c not in "\t\n" and (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0)]
    obeyed += [c for c in shown if 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069]
    assert not obeyed


def test_escape_sequences_in_lines_and_fields_are_shown_not_obeyed() -> None:
    """A line's full reset, 8-bit CSI and BEL, a phase's title sequence and a bidi override in a
    job id are printed as visible symbols; a line's colour codes are dropped."""
    event = {
        "type": "LineLogged",
        "job_id": "j\u202e1",
        "phase": "p\x1b]0;t\x07",
        "lines": [[1, "stdout", "INFO", "t", "\x1b[31mred\x1b[0m \x1bc \u009b2J \x07"]],
    }
    head, line = readable(stored(event)).split("\n")
    assert head.endswith("j\\u202e1  LineLogged  phase=p\u241b]0;t\u2407")
    assert line.split() == ["1", "stdout", "INFO", "red", "\u241bc", "\\x9b2J", "\u2407"]


def test_odd_line_fields_are_shown_as_they_are() -> None:
    """A line whose fields are not the usual types is shown, not a crash of the whole listing."""
    event = {"type": "LineLogged", "lines": [[None, {"a": 1}, 3, "t", ["x"]]]}
    assert readable(stored(event)).splitlines()[1].split() == ["None", "{'a':", "1}", "3", "['x']"]


@pytest.mark.parametrize(
    "raw", ["0001-01-01T00:00:00+00:01", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-00:01"]
)
def test_since_a_time_outside_the_years_1_to_9999_in_utc_says_so(raw: str) -> None:
    """A time a minute past the edge (year 1 at +00:01) is not called "no time": the sentence
    says it lies outside the years a stream can start at (its consumer's start failed in a
    traceback before)."""
    with pytest.raises(ValueError, match=r"lies outside the years 1-9999 in UTC") as caught:
        parse_since(raw)
    assert raw in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "instant"),
    [
        ("0001-01-01T00:01:00+00:01", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:58:59-00:01", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_since_a_time_just_inside_the_years_1_to_9999_in_utc_is_taken(
    raw: str, instant: datetime
) -> None:
    """The first and last instants of the years 1-9999, written with an offset, are times."""
    assert parse_since(raw) == (None, instant)
