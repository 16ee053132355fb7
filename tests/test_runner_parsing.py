"""The runner's output parsing on its own: splitting, carriage returns, protocol, levels."""

from __future__ import annotations

import re

from jobrunner.services.runner import protocol
from jobrunner.services.runner.output import (
    SPLIT_MARKER,
    LineSplitter,
    Progress,
    parse_level,
    parse_progress,
    parse_result,
)


def test_line_split_across_chunks_is_joined() -> None:
    """A line that arrives in three reads is one line."""
    splitter = LineSplitter(1000)
    assert splitter.feed(b"hel") == []
    assert splitter.feed(b"lo wo") == []
    assert splitter.feed(b"rld\nnext") == ["hello world"]
    assert splitter.close() == ["next"]


def test_buffer_never_grows_past_the_cap() -> None:
    """Endless bytes without a newline come out in capped, marked pieces as they arrive."""
    splitter = LineSplitter(100)
    pieces = []
    for _ in range(50):
        pieces += splitter.feed(b"x" * 33)
    assert all(p == "x" * 100 + SPLIT_MARKER for p in pieces)
    assert len(pieces) == 16


def test_carriage_return_bar_is_transient_until_its_line_ends() -> None:
    """\\r redraws are offered as transient state; the finished line keeps the last state."""
    splitter = LineSplitter(1000)
    assert splitter.feed(b"\r[1/3]\r[2/3]") == []
    assert splitter.transient == "[1/3]"
    assert splitter.feed(b"\r[3/3]\n") == ["[3/3]"]


def test_protocol_progress_computes_percent() -> None:
    """current/total without percent gives the percentage."""
    message = protocol.parse('##jobrunner:progress {"current": 1, "total": 4, "phase": "a"}')
    assert message == Progress(current=1, total=4, percent=25.0, phase="a")


def test_protocol_result_and_garbage() -> None:
    """A result object parses; a broken payload or unknown kind is not a message."""
    assert protocol.parse('##jobrunner:result {"found": 3}') == {"found": 3}
    assert protocol.parse("##jobrunner:result [1]") is None
    assert protocol.parse('##jobrunner:weather {"sun": true}') is None


def test_level_needs_its_place() -> None:
    """Levels count at the start or after a timestamp, nowhere else."""
    assert parse_level("ERROR boom") == "ERROR"
    assert parse_level("2025-12-27T12:15:00Z warn: disk") == "WARNING"
    assert parse_level("[12:00:01] CRITICAL x") == "ERROR"
    assert parse_level("processed 3 ERROR rows") == "INFO"


def test_progress_pattern_with_percent_group() -> None:
    """A progress_pattern may capture a percentage instead of current/total."""
    assert parse_progress("at 42%", re.compile(r"(?P<percent>\d+)%")) == Progress(percent=42.0)
    assert parse_progress("[0/0]") is None


def test_result_pattern_numbers() -> None:
    """Digit groups become numbers; the whole line is the summary without a summary group."""
    result = parse_result("saved 12 rows", re.compile(r"saved (?P<rows>\d+) rows"))
    assert result == {"rows": 12, "summary": "saved 12 rows"}
