"""An external worker's report: what is accepted, what is refused (with which code), and how
its text is cleaned."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.reports import (
    MAX_REPORT_BYTES,
    ReportedLine,
    ReportedProgress,
    clean_result,
    decode_report,
    percent_of,
    split_lines,
)
from tests.external_support import json_values, report_like


def decode(body: Any) -> Any:
    return decode_report(msgspec.json.encode(body))


def refused(body: Any) -> ApiError:
    with pytest.raises(ApiError) as raised:
        decode(body) if not isinstance(body, bytes) else decode_report(body)
    return raised.value


def test_empty_report_is_a_heartbeat() -> None:
    """``{}`` is a valid report carrying nothing."""
    report = decode({})
    assert report.lines == []
    assert report.progress_report is None
    assert report.final_result is None


def test_progress_object_and_seed_shorthand_mean_the_same() -> None:
    """``progress: {...}`` and seed 001's top-level phase/progress/message give one progress."""
    nested = decode({"progress": {"phase": "ocr", "percent": 40, "message": "page 3"}})
    flat = decode({"phase": "ocr", "progress": 40, "message": "page 3"})
    assert nested.progress_report == flat.progress_report


def test_seed_data_is_the_result() -> None:
    """Seed 001's final ``data`` is taken as the result."""
    assert decode({"data": {"extracted_text": "x"}}).final_result == {"extracted_text": "x"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"unknown": 1}, "INVALID_REPORT"),
        ({"report_id": "has space"}, "INVALID_REPORT"),
        ({"report_id": "x" * 129}, "INVALID_REPORT"),
        ({"progress": 101}, "INVALID_REPORT"),
        ({"progress": {"current": -1}}, "INVALID_REPORT"),
        ({"progress": {"total": 5}}, "INVALID_REPORT"),
        ({"progress": {"phase": "a\x00b"}}, "INVALID_REPORT"),
        ({"lines": [{"text": "x", "level": "LOUD"}]}, "INVALID_REPORT"),
        ({"lines": [{"text": "x"}] * 1001}, "INVALID_REPORT"),
        ({"error": {"code": "lower_case"}}, "INVALID_REPORT"),
        ({"error": {"code": "X"}}, "INVALID_REPORT"),
        ({"error": {"code": "FAILED_HERE"}, "result": {}}, "INVALID_REPORT"),
        ({"lines": "not a list"}, "INVALID_REPORT"),
        ([], "INVALID_REPORT"),
    ],
)
def test_bad_reports_are_422_naming_the_problem(body: Any, code: str) -> None:
    """Each out-of-contract report is a 422 with a code and a sentence."""
    error = refused(body)
    assert (error.status, error.code) == (422, code)
    assert error.message


def test_not_json_is_400() -> None:
    """A body that is not JSON answers 400 MALFORMED_JSON."""
    error = refused(b"{not json")
    assert (error.status, error.code) == (400, "MALFORMED_JSON")


def test_deeply_nested_json_is_400() -> None:
    """JSON nested deeper than can be read answers 400, not a crash."""
    error = refused(b'{"result":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}}")
    assert (error.status, error.code) == (400, "MALFORMED_JSON")


def test_deeply_nested_result_is_422() -> None:
    """A result nested deeper than 32 levels is refused by name."""
    nested: Any = 1
    for _ in range(40):
        nested = [nested]
    report = decode({"result": {"a": nested}})
    assert report.final_result is not None
    with pytest.raises(ApiError) as raised:
        clean_result(report.final_result)
    assert raised.value.status == 422
    assert "32 deep" in raised.value.message


def test_oversized_report_is_413() -> None:
    """A body over 256 KiB answers 413 REPORT_TOO_LARGE with the limit."""
    error = refused(b" " * (MAX_REPORT_BYTES + 1))
    assert (error.status, error.code) == (413, "REPORT_TOO_LARGE")


def test_lines_with_breaks_become_several_cleaned_as_a_tools() -> None:
    """A text with line breaks is several lines, each cleaned as a tool's line: NUL shown as
    U+2400, a colour code kept whole, an erase removed whole, BEL kept, a CRLF's CR gone."""
    lines = split_lines([ReportedLine(text="a\r\nb\x00\x1b[31mc\x1b[2K\x07", level="ERROR")])
    assert [(ln.text, ln.level) for ln in lines] == [
        ("a", "ERROR"),
        ("b\u2400\x1b[31mc\x07", "ERROR"),
    ]


def test_result_is_cleaned_and_bounded() -> None:
    """Result keys and strings lose their control characters, one at a time; a result over
    64 KiB is a 422."""
    assert clean_result({"a\x00": ["x\x01y", {"n": 1}]}) == {"a\u2400": ["xy", {"n": 1}]}
    assert clean_result({"k\x1b[1m": "\x1b[31mred"}) == {"k[1m": "[31mred"}
    with pytest.raises(ApiError) as raised:
        clean_result({"big": "x" * 70_000})
    assert raised.value.code == "RESULT_TOO_LARGE"


def test_a_result_string_keeps_its_text_after_a_control_character() -> None:
    """UTF-8 read as Windows-1252 holds U+009D (an OSC introducer to a terminal): the control
    goes, the text after it stays (a result's string is data, never cut)."""
    said = "He said \u00e2\u20ac\u0153hello\u00e2\u20ac\x9d and left, total 42 EUR"
    assert clean_result({"note": said}) == {
        "note": "He said \u00e2\u20ac\u0153hello\u00e2\u20ac and left, total 42 EUR"
    }


def test_percent_comes_from_counts_when_not_given() -> None:
    """current/total give the percentage, at most 100."""
    assert percent_of(ReportedProgress(current=1, total=4)) == 25.0
    assert percent_of(ReportedProgress(current=9, total=4)) == 100.0
    assert percent_of(ReportedProgress(current=1, total=0)) is None


def attempt(run: Any, *args: Any) -> Any:
    """What ``run`` returns, or the ApiError it raised (any other exception propagates)."""
    try:
        return run(*args)
    except ApiError as exc:
        return exc


@settings(max_examples=300)
@given(body=report_like | json_values)
def test_any_json_is_a_report_or_a_clear_refusal(body: Any) -> None:
    """Whatever JSON a worker sends is a report, or a 400/413/422 with a code: never a crash."""
    report = attempt(decode, body)
    if isinstance(report, ApiError):
        assert report.status in (400, 413, 422)
        assert report.code
        assert report.message
        return
    for line in split_lines(report.lines):
        assert "\x00" not in line.text
        assert "\n" not in line.text
    if report.final_result is not None:
        cleaned = attempt(clean_result, report.final_result)
        assert not isinstance(cleaned, ApiError) or cleaned.status == 422


@settings(max_examples=200)
@given(body=st.binary(max_size=300))
def test_any_bytes_are_a_report_or_a_clear_refusal(body: bytes) -> None:
    """Any bytes at all answer a report or a 400/422, never an exception of another kind."""
    answer = attempt(decode_report, body)
    assert not isinstance(answer, ApiError) or answer.status in (400, 422)
