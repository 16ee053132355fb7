"""A chunk of a tool's output handled at once gives exactly what handling it line by line gave:
the same lines and split points, levels, masking, progress, results and sequence numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobrunner.common.jobtypes import JobType
from jobrunner.contracts.names import Names
from jobrunner.services.runner.output import LineSplitter, levels_of_lines, parse_level
from jobrunner.services.runner.publisher import LinePublisher, line_size
from jobrunner.services.runner.reporting import JobReporter

AT = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
SECRET = "s3cr3t"


class Offline:
    """What a publisher reads of its connection before it publishes anything."""

    max_payload = 1024 * 1024

    def jetstream(self) -> None:
        return None


class LineByLineSplitter(LineSplitter):
    """The splitter as it was: every line cleaned on its own (the reference)."""

    def _plain_lines(self, buf: bytearray) -> list[str] | None:
        return None


PIECES = [
    b"a", b"x" * 70, b" ", b"\t", b"\n", b"\n", b"\n", b"\r", b"\r\n", b"\x00", b"\xff",
    b"\xc3\xa4", b"\xe2\x80\xa8", b"\xc2\x85", b"\x1c", b"\x1b[1m", b"\x1b[2K", b'"', b"\\",
    b"INFO ", b"ERROR: ", b"warn ", b"[DEBUG] ", b"(fatal) ", b"Success", b"critical|",
    b"\xc4\xb1nfo ", b"\xc5\xbfuccess ",  # dotless i and long s: upper() makes INFO, SUCCESS
    b"2025-12-27 12:15:00,123 ", b"2025-12-27T12:15:00Z ", b"[12:15:00] ", b"12:15:00.5 ",
    b"[1/3]", b"[ 2 / 3 ]", b"[0/0]", b"[9/99999999999]", b"45%", b"done 17 rows",
    SECRET.encode(), b'##jobrunner:progress {"current": 5, "total": 10}',
    b'##jobrunner:result {"rows": 3}', b" " * 197, b"y" * 150,
]  # fmt: skip
# Lines of a few pieces each (what a level, a mask or a count needs to be at a line's start),
# and pieces strewn anywhere (a line break inside an escape, a carriage return, a cut character).
LINES = st.lists(
    st.lists(st.sampled_from(PIECES), max_size=5).map(lambda p: b"".join(p) + b"\n"), max_size=12
)
OUTPUT = LINES.map(b"".join) | st.lists(st.sampled_from(PIECES), max_size=80).map(b"".join)

JOB_TYPES = [
    JobType(name="plain"),
    JobType(name="custom", level_pattern=r"^<(?P<level>\w+)>",
            progress_pattern=r"^(?P<percent>\d+)%"),
    JobType(name="result", result_pattern=r"done (?P<rows>\d+) rows"),
]  # fmt: skip


def held(publisher: LinePublisher) -> Any:
    return [msgspec.structs.astuple(line) for line in publisher._lines], publisher._progress


def run(splitter: LineSplitter, job_type: JobType, chunks: list[bytes], by_line: bool) -> Any:
    """Feed the chunks as the runner does; what the publisher holds after each one."""
    publisher = LinePublisher(cast(Any, Offline()), Names("t"), "job", max_line_bytes=64)
    reporter = JobReporter(publisher, job_type, [SECRET])
    states = []
    for chunk in chunks:
        lines = splitter.feed(chunk)
        if by_line:
            for text in lines:
                reporter.line("stdout", text, AT)
        else:
            reporter.lines("stdout", lines, AT)
        if splitter.transient is not None:
            reporter.line("stdout", splitter.transient, AT, transient=True)
            splitter.transient = None
        states.append(held(publisher))
    reporter.lines("stdout", splitter.close(), AT)
    states.append(held(publisher))
    return states, reporter.result, publisher


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(OUTPUT, st.data(), st.sampled_from(JOB_TYPES), st.integers(64, 300))
def test_chunk_at_once_gives_what_line_by_line_gave(
    output: bytes, data: st.DataObject, job_type: JobType, cap: int
) -> None:
    """Whatever a tool prints, however the pipe cuts it, its log, levels, masks, progress and
    result are the same as when every line was handled on its own."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(output)), max_size=6)))
    chunks = [output[a:b] for a, b in zip([0, *cuts], [*cuts, len(output)], strict=True)]
    expected, expected_result, _ = run(LineByLineSplitter(cap), job_type, chunks, by_line=True)
    got, got_result, publisher = run(LineSplitter(cap), job_type, chunks, by_line=False)
    assert got == expected
    assert got_result == expected_result
    # A buffered line's size is its encoded size, or (for a whole chunk) a byte more at most.
    for line, size in zip(publisher._lines, publisher._sizes, strict=True):
        assert line_size(line) <= size <= line_size(line) + 1
    assert publisher._buffered_bytes == sum(publisher._sizes)


LEVEL_LINES = st.lists(st.sampled_from(PIECES), max_size=12).map(
    lambda parts: b"".join(parts).decode("utf-8", "replace").replace("\n", "")
)


@settings(deadline=None)
@given(st.lists(LEVEL_LINES | st.text().map(lambda t: t.replace("\n", "")), min_size=1))
def test_levels_of_a_block_are_each_lines_level(lines: list[str]) -> None:
    """The level of every line in a block is the one the line alone would get."""
    assert levels_of_lines(lines) == [parse_level(line) for line in lines]


# Lines that begin alike, a level word or something close to one (the counting shortcut's
# cases and its near misses), each followed by whatever a line may hold.
LEADS = st.sampled_from(
    [
        "INFO ",
        "info ",
        "Warn ",
        "WARNING ",
        "WARNING: ",
        "CRITICAL ",
        "fatal ",
        "DEBUG\t",
        "INFOX ",
        "INFO",
        " INFO ",
        "[INFO] ",
        "NOTICE ",
        "ERROR  ",
        "SUCCESS ",
        "SUCCEß ",
        "\u0131nfo ",  # a dotless i: the regex reads it as I
    ]
)


@settings(deadline=None)
@given(
    LEADS,
    st.lists(LEVEL_LINES | st.text().map(lambda t: t.replace("\n", "")), min_size=1),
    st.data(),
)
def test_levels_of_lines_that_begin_alike_are_each_lines_level(
    lead: str, tails: list[str], data: st.DataObject
) -> None:
    """A block whose lines all begin with the same level word (counted, not matched) or nearly
    (one line begins otherwise) gets the level each line alone would get."""
    lines = [lead + tail for tail in tails]
    if data.draw(st.booleans()):
        odd = data.draw(st.integers(0, len(lines) - 1))
        lines[odd] = data.draw(LEADS) + lines[odd][len(lead) :]
    assert levels_of_lines(lines) == [parse_level(line) for line in lines]


def test_the_last_count_of_a_chunk_is_the_progress_shown() -> None:
    """Two counts in one read of the pipe: the bar shows the later one, as line by line."""
    states, _, _ = run(LineSplitter(1024), JOB_TYPES[0], [b"[1/3] a\n[2/3] b\nc\n"], by_line=False)
    assert states[-1][1].current == 2


def test_no_lines_have_no_levels() -> None:
    assert levels_of_lines([]) == []
