"""Every message fits and every field stays in its bounds, whatever a tool prints (Hypothesis)."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobrunner.common.settings import Settings, SettingsError
from jobrunner.contracts import codec, events
from jobrunner.services.runner import protocol
from jobrunner.services.runner.bounds import (
    BoundedResult,
    bounded_progress,
    clean_field,
)
from jobrunner.services.runner.output import (
    SPLIT_MARKER,
    LineSplitter,
    Progress,
    clean_text,
    parse_progress,
    split_line,
)
from jobrunner.services.runner.publisher import (
    MAX_BATCH_BYTES,
    batch_budget,
    check_line_fits,
    line_size,
    next_batch,
)
from jobrunner.services.runner.service import run_runner

AT = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
# Bytes that make output hard: control characters, NUL, bytes that are not UTF-8, multi-byte
# characters and plain text.
HARD_BYTES = [b"\x00", b"\x01", b"\x1f", b"\xff", b"\xc3", "ä".encode(), "😀".encode(), b"a"]
hostile_bytes = st.binary(max_size=3000) | st.lists(st.sampled_from(HARD_BYTES), max_size=2000).map(
    b"".join
)
line_caps = st.integers(min_value=64, max_value=700)


def _unmarked(pieces: list[str]) -> str:
    for piece in pieces[:-1]:
        assert piece.endswith(SPLIT_MARKER)
    return "".join(p.removesuffix(SPLIT_MARKER) for p in pieces[:-1]) + pieces[-1]


@given(chunks=st.lists(hostile_bytes, max_size=6), cap=line_caps)
def test_every_piece_of_tool_output_is_within_max_line_bytes(chunks: list[bytes], cap: int) -> None:
    """However the output arrives, no piece's text is longer than max_line_bytes of UTF-8."""
    splitter = LineSplitter(cap)
    pieces = [p for chunk in chunks for p in splitter.feed(chunk)] + splitter.close()
    for piece in pieces:
        assert len(piece.removesuffix(SPLIT_MARKER).encode()) <= cap


@given(raw=hostile_bytes.map(lambda b: b.translate(None, b"\n\r\x1b")), cap=line_caps)
def test_pieces_of_a_line_rejoin_to_the_cleaned_line(raw: bytes, cap: int) -> None:
    """A line split into pieces loses nothing: without their markers they are the cleaned line."""
    pieces = split_line(raw, cap)
    assert all(len(p.removesuffix(SPLIT_MARKER).encode()) <= cap for p in pieces)
    assert _unmarked(pieces) == clean_text(raw)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    raws=st.lists(hostile_bytes, min_size=1, max_size=40),
    cap=st.integers(min_value=64, max_value=4000),
    max_payload=st.integers(min_value=32 * 1024, max_value=1024 * 1024),
    batch_max=st.integers(min_value=1, max_value=1000),
)
def test_every_batch_encodes_under_max_payload(
    raws: list[bytes], cap: int, max_payload: int, batch_max: int
) -> None:
    """Lines of any content, batched: each LineLogged (with its headers) is under max_payload."""
    try:
        check_line_fits(cap, max_payload)
    except SettingsError:
        return  # refused at start: never batched
    texts = [piece for raw in raws for piece in split_line(raw, cap)]
    lines = [events.LogLine(seq, "stderr", "WARNING", AT, t) for seq, t in enumerate(texts, 1)]
    sizes = [line_size(line) for line in lines]
    limit = min(MAX_BATCH_BYTES, batch_budget(max_payload))
    sent: list[events.LogLine] = []
    while len(sent) < len(lines):
        count, size = next_batch(sizes[len(sent) :], limit, batch_max)
        batch = lines[len(sent) : len(sent) + count]
        event = events.LineLogged(job_id="j" * 64, event_id="e" * 70, lines=batch)
        header_block = sum(len(k) + len(v) + 4 for k, v in codec.headers(event).items()) + 12
        assert len(codec.encode(event)) + header_block <= max_payload
        assert 1 <= count <= batch_max
        assert size == sum(line_size(line) for line in batch)
        sent.extend(batch)
    assert sent == lines


def test_a_max_line_bytes_that_cannot_fit_is_refused_with_a_sentence() -> None:
    """max_line_bytes of 1 MiB under a 1 MiB max_payload is refused, naming what would fit."""
    with pytest.raises(SettingsError, match=r"max_line_bytes = 1048576 cannot fit .* at most \d+"):
        check_line_fits(1024 * 1024, 1024 * 1024)
    check_line_fits(65536, 1024 * 1024)  # the defaults fit


@given(text=st.text())
def test_cleaned_field_has_no_control_characters(text: str) -> None:
    """A phase, message or result string never carries NUL or another control character."""
    cleaned = clean_field(text, 200)
    assert len(cleaned) <= 200
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in cleaned)
    cleaned.encode("utf-8")  # no lone surrogate either


@given(
    current=st.none() | st.integers(),
    total=st.none() | st.integers(),
    percent=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    phase=st.none() | st.text(),
    message=st.none() | st.text(max_size=5000),
)
def test_bounded_progress_always_decodes_under_the_contract(
    current: int | None,
    total: int | None,
    percent: float | None,
    phase: str | None,
    message: str | None,
) -> None:
    """Any reported progress leaves the runner as an event every consumer can decode."""
    progress = bounded_progress(Progress(current, total, percent, phase, message))
    event = events.ProgressReported(
        job_id="j",
        current=progress.current,
        total=progress.total,
        percent=progress.percent,
        phase=progress.phase,
        message=progress.message,
    )
    assert codec.decode(codec.encode(event)) == event
    if percent is not None and math.isfinite(percent):
        assert progress.percent == min(100.0, max(0.0, percent))


def test_absurd_progress_from_a_line_is_no_progress() -> None:
    """``[99999999999999999999/5]`` is a number that only looks like a count: no progress."""
    assert parse_progress("INFO [99999999999999999999/5] done") is None


def test_absurd_count_reported_otherwise_is_dropped() -> None:
    """A count the read model cannot hold is dropped, the percentage clamped to 100."""
    progress = Progress(current=99999999999999999999, total=5, percent=100.0)
    assert bounded_progress(progress) == Progress(current=None, total=5, percent=100.0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=10,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(merges=st.lists(st.dictionaries(st.text(), json_values, max_size=6), max_size=4))
def test_result_stays_within_its_bound_and_encodes(merges: list[dict[str, object]]) -> None:
    """Whatever a tool reports as its result, it encodes, fits and holds no NUL."""
    result = BoundedResult()
    for fields in merges:
        result.merge(fields)
    encoded = msgspec.json.encode(result.value())
    assert len(encoded) <= events.MAX_RESULT_BYTES
    assert b"\\u0000" not in encoded


def test_too_large_result_is_cut_with_a_marker() -> None:
    """A 1 MB summary is cut with …; fields that no longer fit are named in ``_cut``."""
    result = BoundedResult()
    result.merge({"summary": "x" * 1_000_000})
    result.merge({f"field{i}": "y" * 10_000 for i in range(10)})
    value = result.value()
    assert value["summary"].endswith("…")
    assert events.RESULT_CUT_FIELD in value
    assert value[events.RESULT_CUT_FIELD].startswith("6 field(s) left out (field4, ")
    assert len(msgspec.json.encode(value)) <= events.MAX_RESULT_BYTES


async def test_runner_refuses_to_start_with_a_line_cap_no_message_can_hold(
    settings: Settings,
) -> None:
    """A runner started with max_line_bytes = 1 MiB stops at once, saying what would fit."""
    too_large = msgspec.structs.replace(settings, max_line_bytes=1024 * 1024)
    with pytest.raises(SettingsError, match="max_payload is 1048576 bytes"):
        await asyncio.wait_for(run_runner(too_large, asyncio.Event()), 30)


@given(current=st.integers(min_value=0), total=st.integers(min_value=0), digits=st.integers(0, 900))
def test_progress_with_any_number_of_digits_is_parsed_without_error(
    current: int, total: int, digits: int
) -> None:
    """``[<any digits>/<any digits>]`` in a line or the protocol never breaks the runner."""
    huge = int("9" * digits) if digits else 0
    for c, t in ((current, total), (huge, total), (current, huge), (huge, huge)):
        found = parse_progress(f"INFO [{c}/{t}] working")
        sent = protocol.parse(f'##jobrunner:progress {{"current": {c}, "total": {t}}}')
        for progress in (found, sent):
            if isinstance(progress, Progress):
                bounded = bounded_progress(progress)
                assert bounded.percent is None or 0.0 <= bounded.percent <= 100.0


anything = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.lists(st.integers(), max_size=3)
)


@given(current=anything, total=anything, percent=anything, phase=anything, message=anything)
def test_progress_of_any_python_values_is_bounded_without_error(
    current: object, total: object, percent: object, phase: object, message: object
) -> None:
    """ctx.progress called with values of any type never breaks the job; the event decodes."""
    progress = bounded_progress(Progress(current, total, percent, phase, message))  # type: ignore[arg-type]
    event = events.ProgressReported(
        job_id="j",
        current=progress.current,
        total=progress.total,
        percent=progress.percent,
        phase=progress.phase,
        message=progress.message,
    )
    assert codec.decode(codec.encode(event)) == event
