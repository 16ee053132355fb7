"""The tool-to-runner protocol: ``##jobrunner:progress {...}`` and ``##jobrunner:result {...}``."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.services.runner.output import MAX_PROGRESS_COUNT, Progress
from jobrunner.services.runner.protocol import PREFIX, parse


def test_progress_with_counts_computes_the_percentage() -> None:
    """current/total without a percent shows the percentage of items done."""
    assert parse('##jobrunner:progress {"current": 42, "total": 127, "phase": "enrich"}') == (
        Progress(current=42, total=127, percent=33.1, phase="enrich")
    )


def test_progress_with_percent_and_message() -> None:
    """A tool may report a percentage, a phase and a message of its own."""
    line = '##jobrunner:progress {"percent": 12.5, "phase": "download", "message": "Müller"}'
    assert parse(line) == Progress(percent=12.5, phase="download", message="Müller")


@pytest.mark.parametrize(
    ("body", "percent"),
    [('{"percent": 150}', 100.0), ('{"percent": -5}', 0.0), ('{"current": 10, "total": 3}', 100.0)],
)
def test_progress_percentage_is_clamped(body: str, percent: float) -> None:
    """A percentage outside 0-100, given or computed, shows as 0 or 100."""
    progress = parse(f"{PREFIX}progress {body}")
    assert isinstance(progress, Progress)
    assert progress.percent == percent


@pytest.mark.parametrize(
    "body",
    [
        '{"current": -1}',
        '{"total": -5}',
        '{"current": 2147483648}',
        '{"total": 99999999999999999999}',
    ],
)
def test_progress_count_that_cannot_be_stored_is_logged_as_it_is(body: str) -> None:
    """A negative count, or one too large for the job's progress, makes the line a plain line."""
    assert parse(f"{PREFIX}progress {body}") is None


def test_unknown_progress_fields_are_ignored() -> None:
    """A field the runner does not know (from a newer tool) does not spoil the message."""
    assert parse('##jobrunner:progress {"current": 1, "eta": 5}') == Progress(current=1)


def test_result_is_a_json_object() -> None:
    """##jobrunner:result carries one JSON object, taken as it is."""
    assert parse('##jobrunner:result {"summary": "89 gefunden", "found": 89}') == {
        "summary": "89 gefunden",
        "found": 89,
    }


@pytest.mark.parametrize(
    "line",
    [
        "##jobrunner:progress",
        "##jobrunner:progress null",
        '##jobrunner:progress {"current": "many"}',
        '##jobrunner:progress {"current": 1} trailing',
        "##jobrunner:result [1, 2]",
        '##jobrunner:result {"a": 1',
        "##jobrunner:unknown {}",
        ' ##jobrunner:progress {"current": 1}',
        "plain output",
    ],
)
def test_anything_else_is_not_a_message(line: str) -> None:
    """A line that is not exactly a valid message is logged as it is, not acted on."""
    assert parse(line) is None


def test_nul_in_progress_text_shows_as_a_symbol() -> None:
    """A NUL escaped into a phase or message shows as ␀, like NUL anywhere else in output."""
    progress = parse('##jobrunner:progress {"phase": "a\\u0000b", "message": "\\u0000"}')
    assert progress == Progress(phase="a␀b", message="␀")


def test_nul_anywhere_in_a_result_shows_as_a_symbol() -> None:
    """A NUL escaped into a result's keys or values, however deep, shows as ␀."""
    result = parse('##jobrunner:result {"a\\u0000": ["x\\u0000", {"k": "\\u0000", "n": 1}]}')
    assert result == {"a␀": ["x␀", {"k": "␀", "n": 1}]}


@pytest.mark.parametrize("kind", ["progress", "result"])
def test_deeply_nested_message_is_logged_as_it_is(kind: str) -> None:
    """A message nested thousands of levels deep (it fits in one line) is a plain line, no error."""
    assert parse(f'{PREFIX}{kind} {{"a": {"[" * 5000}{"]" * 5000}}}') is None


def strings_in(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Progress):
        return [s for s in (value.phase, value.message) if s is not None]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


JSON_WITH_NUL = st.recursive(
    st.none() | st.integers(0, 10) | st.text(alphabet="a\x00"),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet="k\x00"), inner),
    max_leaves=8,
)


@settings(deadline=None)
@given(st.sampled_from(["progress", "result"]), JSON_WITH_NUL)
def test_no_protocol_message_carries_a_nul(kind: str, body: object) -> None:
    """Whatever JSON a tool sends, no text of a message it becomes holds a NUL character."""
    payload = {"phase": body, "message": body} if kind == "progress" else {"r": body}
    message = parse(f"{PREFIX}{kind} " + msgspec.json.encode(payload).decode())
    assert not any("\x00" in s for s in strings_in(message))


@settings(deadline=None)
@given(
    st.sampled_from(["progress ", "result ", "progress", ""]),
    st.text(max_size=80)
    | st.builds(
        '{{"current": {}, "total": {}}}'.format,
        st.integers(-(2**70), 2**70),
        st.integers(-(2**70), 2**70),
    ),
)
def test_any_protocol_line_parses_or_is_logged(kind: str, body: str) -> None:
    """Whatever follows the prefix, the line is a message, or None (logged as it is); no error."""
    message = parse(PREFIX + kind + body)
    assert message is None or isinstance(message, Progress | dict)
    if isinstance(message, Progress):
        assert message.percent is None or 0.0 <= message.percent <= 100.0
        for count in (message.current, message.total):
            assert count is None or 0 <= count <= MAX_PROGRESS_COUNT
