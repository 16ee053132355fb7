"""Strict query strings: unknown parameters and bad values are a 400 naming the field."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.datastructures import MultiDict

from jobrunner.services.api.batch_readmodels import BatchJobCursor
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.newest_first import NewestFirstCursor
from jobrunner.services.api.queryparams import (
    MAX_SEARCH_LENGTH,
    Query,
    decode_cursor,
    encode_cursor,
)

KNOWN = ("status", "job_type", "q", "limit", "since", "cursor")


def query(*pairs: tuple[str, str]) -> Query:
    return Query(MultiDict(list(pairs)), KNOWN)


def refused(call: Any) -> ApiError:
    with pytest.raises(ApiError) as exc:
        call()
    assert exc.value.status == 400
    assert exc.value.message
    return exc.value


def test_unknown_parameter_is_named_with_the_known_ones() -> None:
    """A typo such as ?stauts= is a 400 naming it and listing what is accepted."""
    error = refused(lambda: query(("stauts", "failed")))
    assert error.code == "UNKNOWN_QUERY_PARAMETER"
    assert error.extra == {"field": "stauts", "unknown": ["stauts"], "known": sorted(KNOWN)}


def test_repeated_and_comma_separated_values_combine() -> None:
    """?status=a,b&status=c means all three, each once, in the order given."""
    q = query(("status", "failed, running"), ("status", "failed"))
    assert q.choices("status", ["running", "failed", "completed"]) == ("failed", "running")


def test_value_outside_the_choices_is_refused() -> None:
    """A status that does not exist is a 400 that lists the valid ones."""
    error = refused(lambda: query(("status", "done")).choices("status", ["failed", "completed"]))
    assert (error.code, error.extra["field"]) == ("INVALID_QUERY", "status")
    assert "failed, completed" in error.message


@pytest.mark.parametrize("value", ["a b", "a/b", "x" * 201, "*"])
def test_names_must_look_like_names(value: str) -> None:
    """A job type filter with spaces, slashes or wildcards is refused, not matched loosely."""
    refused(lambda: query(("job_type", value)).names("job_type"))


def test_name_with_a_trailing_line_break_is_refused() -> None:
    """?job_type=scraper%0A is refused, not taken for scraper or passed on with its line break."""
    refused(lambda: query(("job_type", "scraper\n")).name("job_type"))


def test_single_valued_parameter_given_twice_is_refused() -> None:
    """?limit=1&limit=2 is ambiguous and refused."""
    error = refused(lambda: query(("limit", "1"), ("limit", "2")).integer("limit", 50, 1))
    assert "only once" in error.message


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 50), ("1", 1), ("500", 500)], ids=["absent", "low", "high"]
)
def test_integer_in_range_or_default(raw: str | None, expected: int) -> None:
    """An integer parameter in range is taken; an absent one takes its default."""
    q = query(("limit", raw)) if raw is not None else query()
    assert q.integer("limit", 50, 1, 500) == expected


@pytest.mark.parametrize(
    ("raw", "words"), [("0", "between 1 and 500"), ("501", "between 1 and 500"), ("ten", "integer")]
)
def test_integer_out_of_range_or_not_a_number_is_refused(raw: str, words: str) -> None:
    """A limit outside its range or not a number says what it must be."""
    error = refused(lambda: query(("limit", raw)).integer("limit", 50, 1, 500))
    assert words in error.message


@pytest.mark.parametrize("raw", ["+5", "1_0", "٣", " 5", "5 ", "-", "--1", "0x1f", "5.0"])
def test_integer_in_other_digits_or_signs_is_refused(raw: str) -> None:
    """A number Python would read but the API does not write (a sign, an underscore, another
    script's digits, spaces) is refused as not an integer, not read as some other value."""
    error = refused(lambda: query(("limit", raw)).integer("limit", 50, 1, 500))
    assert "digits 0-9" in error.message


@pytest.mark.parametrize("digits", [21, 32, 5000])
def test_integer_of_many_digits_is_out_of_range(digits: int) -> None:
    """However many digits a value has, it is refused as out of range (5,000 digits used to
    meet Python's own limit on int())."""
    error = refused(lambda: query(("limit", "9" * digits)).integer("limit", None, 0, 2**63 - 1))
    assert "between 0 and 9223372036854775807" in error.message


@pytest.mark.parametrize("raw", ["-1", "-0", "-500", "-" + "9" * 5000])
def test_a_negative_integer_is_told_the_range(raw: str) -> None:
    """A negative value is a number below the range, and is told the range (not that it is no
    integer)."""
    error = refused(lambda: query(("limit", raw)).integer("limit", 50, 1, 500))
    assert "between 1 and 500" in error.message


@pytest.mark.parametrize(("raw", "expected"), [("007", 7), ("0" * 19 + "5", 5), ("0" * 5000, 0)])
def test_leading_zeros_are_read_as_the_number(raw: str, expected: int) -> None:
    """Leading zeros mean nothing, however many (as in Last-Event-ID): 007 is 7."""
    assert query(("limit", raw)).integer("limit", None, 0, 2**63 - 1) == expected


@settings(deadline=None, max_examples=300)
@given(st.integers(-(10**25), 10**25), st.integers(0, 30))
def test_any_integer_written_with_zeros_is_taken_or_told_the_range(number: int, zeros: int) -> None:
    """Every integer, written in ASCII digits after any number of zeros, is taken when within
    its range, and otherwise told the range."""
    raw = ("-" if number < 0 else "") + "0" * zeros + str(abs(number))
    maximum = 2**63 - 1
    if 0 <= number <= maximum:
        assert query(("limit", raw)).integer("limit", None, 0, maximum) == number
    else:
        error = refused(lambda: query(("limit", raw)).integer("limit", None, 0, maximum))
        assert f"between 0 and {maximum}" in error.message


def test_integer_without_maximum_says_at_least() -> None:
    """A parameter with only a lower bound says 'at least'."""
    assert "at least 1" in refused(lambda: query(("limit", "0")).integer("limit", 5, 1)).message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-01-31T12:00:00Z", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T12:00:00", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T13:00:00+01:00", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T13:00:00 01:00", datetime(2026, 1, 31, 12, tzinfo=UTC)),
        ("2026-01-31T13:00 0100", datetime(2026, 1, 31, 12, tzinfo=UTC)),
    ],
    ids=["z", "naive", "offset", "unencoded-plus", "unencoded-plus-short"],
)
def test_timestamps_in_iso_8601(raw: str, expected: datetime) -> None:
    """Times are ISO 8601; no zone means UTC; a '+' the client forgot to encode still works."""
    assert query(("since", raw)).timestamp("since") == expected


def test_timestamp_that_is_not_iso_is_refused_with_an_example() -> None:
    """A time that is not ISO 8601 is refused with an example of one that is."""
    assert (
        "2026-01-31T12:00:00Z"
        in refused(lambda: query(("since", "yesterday")).timestamp("since")).message
    )


def test_timestamp_keeps_a_negative_offset() -> None:
    """A '-05:00' offset is kept as it is."""
    at = query(("since", "2026-01-31T07:00:00-05:00")).timestamp("since")
    assert at is not None
    assert at.utcoffset() == timezone(timedelta(hours=-5)).utcoffset(None)


@pytest.mark.parametrize(
    ("raw", "side"),
    [("0001-01-01T00:00:00+00:01", "before"), ("9999-12-31T23:59:59.999999-00:01", "after")],
    ids=["a-minute-before-year-1", "a-minute-after-9999"],
)
def test_a_time_whose_utc_instant_no_datetime_holds_is_refused(raw: str, side: str) -> None:
    """A time a minute beyond years 1-9999 in UTC is a 400 naming it (the driver could not send
    it: a 500 before)."""
    error = refused(lambda: query(("since", raw)).timestamp("since"))
    assert error.extra["field"] == "since"
    assert raw in error.message
    assert f"lies {side} the years 1 to 9999 in UTC" in error.message


@pytest.mark.parametrize(
    "raw", ["0001-01-01T00:00:00-00:01", "9999-12-31T23:59:59.999999+00:01"], ids=["year-1", "9999"]
)
def test_a_time_a_minute_inside_years_1_to_9999_in_utc_is_read(raw: str) -> None:
    """A time just inside the range (a minute the other side of the edge) is read as given."""
    at = query(("since", raw)).timestamp("since")
    assert at == datetime.fromisoformat(raw)
    assert at is not None
    assert at.astimezone(UTC) == at


@pytest.mark.parametrize(
    ("raw", "words"), [("x" * (MAX_SEARCH_LENGTH + 1), "longer"), ("a\x00", "NUL")]
)
def test_search_text_is_bounded_and_without_nul(raw: str, words: str) -> None:
    """Search text over the limit or with a NUL character is refused."""
    assert words in refused(lambda: query(("q", raw)).text("q")).message


def test_empty_search_text_means_no_search() -> None:
    """?q= is the same as no search."""
    assert query(("q", "")).text("q") is None


def test_cursor_handed_out_is_read_back() -> None:
    """A cursor the API handed out leads to the same place."""
    token = encode_cursor([41, "j1"])
    assert query(("cursor", token)).cursor("cursor", tuple[int, str]) == (41, "j1")


@pytest.mark.parametrize("raw", ["!!!", "e30", encode_cursor({"a": 1})])
def test_cursor_not_handed_out_is_refused(raw: str) -> None:
    """A cursor a client built or damaged is a 400, not a 500."""
    assert (
        "cursor"
        in refused(lambda: query(("cursor", raw)).cursor("cursor", tuple[int, str])).message
    )


def test_deeply_nested_cursor_is_refused() -> None:
    """A cursor holding JSON nested thousands of levels deep is a 400, not a 500."""
    raw = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode()
    assert (
        "cursor"
        in refused(lambda: query(("cursor", raw)).cursor("cursor", tuple[int, str])).message
    )


@settings(deadline=None)
@given(st.text(max_size=60))
def test_any_cursor_text_is_read_or_refused(raw: str) -> None:
    """Whatever a client puts in ?cursor=, it decodes or raises the cursor error."""
    try:
        decode_cursor(raw, tuple[int, str])
    except ValueError as exc:
        assert str(exc) == "bad cursor"  # noqa: PT017


@settings(deadline=None)
@given(st.text(max_size=40))
def test_any_timestamp_text_is_read_or_refused(raw: str) -> None:
    """Whatever a client puts in ?since=, it is a time in UTC or a 400."""
    try:
        at = query(("since", raw)).timestamp("since")
    except ApiError as exc:
        assert exc.status == 400  # noqa: PT017
        return
    assert at is not None
    assert at.tzinfo is not None
    at.astimezone(UTC)  # as the read's driver sends it to Postgres: never an OverflowError


@settings(deadline=None)
@given(st.text(max_size=40))
def test_any_integer_text_is_read_or_refused(raw: str) -> None:
    """Whatever a client puts in ?limit=, it is an integer in range or a 400."""
    try:
        value = query(("limit", raw)).integer("limit", 50, 1, 500)
    except ApiError as exc:
        assert exc.status == 400  # noqa: PT017
        return
    assert value is not None
    assert 1 <= value <= 500


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, False), ("false", False), ("true", True), ("all", None)]
)
def test_archived_is_false_true_or_all(raw: str | None, expected: bool | None) -> None:
    """?archived= leaves archived rows out by default; true shows only them, all both."""
    pairs = [] if raw is None else [("archived", raw)]
    assert Query(MultiDict(pairs), ("archived",)).archived() is expected


@settings(deadline=None)
@given(st.text(max_size=20).filter(lambda raw: raw not in ("false", "true", "all")))
def test_any_other_archived_text_is_refused(raw: str) -> None:
    """Whatever else a client puts in ?archived=, it is a 400 naming the parameter."""
    error = refused(lambda: Query(MultiDict([("archived", raw)]), ("archived",)).archived())
    assert error.extra["field"] == "archived"


@settings(deadline=None)
@given(
    st.one_of(
        st.text(max_size=60),
        st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    )
)
def test_any_batch_cursor_text_is_read_or_refused(raw: str) -> None:
    """Whatever a client puts in a batch list or batch job cursor, it is a position or a 400."""
    for kind in (NewestFirstCursor, BatchJobCursor):
        try:
            value = Query(MultiDict([("cursor", raw)]), ("cursor",)).cursor("cursor", kind)
        except ApiError as exc:
            assert exc.status == 400  # noqa: PT017
            continue
        assert value is None or isinstance(value, kind)


def test_a_batch_job_cursor_handed_out_reads_back() -> None:
    """The jobs_cursor of a batch page is read back as the same position."""
    cursor = BatchJobCursor(41, 2, "job-x")
    raw = encode_cursor(cursor)
    assert Query(MultiDict([("c", raw)]), ("c",)).cursor("c", BatchJobCursor) == cursor


_TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=200)
@given(start=_TIMES, end=_TIMES)
def test_a_time_range_that_ends_before_it_begins_is_refused_naming_both(
    start: datetime, end: datetime
) -> None:
    """created_from later than created_to is a 400 INVALID_TIME_RANGE quoting both values, not
    an empty page; any other range is read as given."""
    raw_from, raw_to = start.isoformat(), end.isoformat()
    read = Query(
        MultiDict([("created_from", raw_from), ("created_to", raw_to)]),
        ("created_from", "created_to"),
    )
    if start <= end:
        assert read.time_range("created_from", "created_to") == (start, end)
        return
    error = refused(lambda: read.time_range("created_from", "created_to"))
    assert error.code == "INVALID_TIME_RANGE"
    assert raw_from in error.message
    assert raw_to in error.message
    assert error.extra["field"] == "created_from"
