"""Reading a batch request: every job checked, every problem named, never a crash."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.common.jobtypes import load_job_types
from jobrunner.services.api.batchrequest import MAX_LISTED_ERRORS, plan_batch
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.jsonbody import decode_any as decode_body
from jobrunner.services.api.jsonbody import wide_encoding

TYPES = load_job_types(Path(__file__).parents[1] / "tools" / "runner_jobtypes.toml")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
job_like = st.fixed_dictionaries(
    {},
    optional={
        "job_type": st.sampled_from(sorted(TYPES)) | st.text() | json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["lines", "interval", "exit_code", "pidfile", "x"]) | st.text(),
            json_values,
            max_size=4,
        )
        | json_values,
        "extra": json_values,
    },
)
batch_like = st.fixed_dictionaries(
    {},
    optional={
        "batch_name": st.text(max_size=210) | json_values,
        "jobs": st.lists(job_like | json_values, max_size=8) | json_values,
        "other": json_values,
    },
)


def refused_or(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The function's result, or the ApiError it raised (any other error fails the test)."""
    try:
        return function(*args, **kwargs)
    except ApiError as exc:
        return exc


hostile = batch_like | st.fixed_dictionaries({"batch": batch_like}) | json_values


@settings(max_examples=400, deadline=None)
@given(hostile)
def test_any_body_is_planned_or_refused_with_a_422(raw: Any) -> None:
    """Whatever JSON a client sends, the answer is a plan or 422 INVALID_BATCH with problems."""
    plan = refused_or(plan_batch, raw, TYPES, max_jobs=5)
    if isinstance(plan, ApiError):
        assert plan.status == 422
        assert plan.code == "INVALID_BATCH"
        assert 1 <= len(plan.extra["errors"]) <= MAX_LISTED_ERRORS
        for problem in plan.extra["errors"]:
            assert set(problem) == {"index", "field", "code", "message"}
        return
    assert 1 <= len(plan.jobs) <= 5
    assert plan.fingerprint()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_answer_400(raw: bytes) -> None:
    """Bytes that are not JSON answer 400 MALFORMED_JSON (BODY_NOT_UTF8 when they are not
    UTF-8, or read as JSON in UTF-16 or UTF-32: a first character with NUL bytes beside it, as
    ``b" \\x00"``, is valid UTF-8 but never JSON in it), never an unexpected error."""
    decoded = refused_or(decode_body, raw)
    if isinstance(decoded, ApiError):
        try:
            raw.decode()
        except UnicodeDecodeError:
            not_utf8 = True
        else:
            not_utf8 = wide_encoding(raw) is not None
        expected = "BODY_NOT_UTF8" if not_utf8 else "MALFORMED_JSON"
        assert (decoded.status, decoded.code) == (400, expected)


def test_a_space_and_a_nul_is_told_as_utf16() -> None:
    """Valid UTF-8 that is a space beside a NUL: told as UTF-16LE JSON, not "not valid JSON"
    (the example Hypothesis found; in UTF-8 a NUL is never JSON)."""
    with pytest.raises(ApiError) as caught:
        decode_body(b" \x00")
    assert (caught.value.code, caught.value.extra["encoding"]) == ("BODY_NOT_UTF8", "UTF-16LE")


def test_deeply_nested_json_answers_400() -> None:
    """JSON nested too deep to read is refused, not a crash."""
    with pytest.raises(ApiError) as caught:
        decode_body(b"[" * 100_000 + b"]" * 100_000)
    assert caught.value.code == "MALFORMED_JSON"


def test_every_bad_job_is_named_not_only_the_first() -> None:
    """Two bad jobs and a bad name are all listed in one answer."""
    raw = {"batch_name": "", "jobs": [{"job_type": "emit"}, {"job_type": "nope"}, 3]}
    with pytest.raises(ApiError) as caught:
        plan_batch(raw, TYPES, max_jobs=10)
    problems = [(p["index"], p["code"]) for p in caught.value.extra["errors"]]
    assert problems == [(None, "INVALID_LENGTH"), (1, "UNKNOWN_JOB_TYPE"), (2, "NOT_AN_OBJECT")]


def test_the_fingerprint_ignores_spelling_but_not_content() -> None:
    """Key order and defaults do not change a batch's fingerprint; a parameter value does."""
    one = plan_batch({"batch_name": "b", "jobs": [{"job_type": "emit"}]}, TYPES, 10)
    spelled = plan_batch(
        {
            "jobs": [{"parameters": {"lines": 5, "interval": "0"}, "job_type": "emit"}],
            "batch_name": "b",
        },
        TYPES,
        10,
    )
    other = plan_batch(
        {"batch_name": "b", "jobs": [{"job_type": "emit", "parameters": {"lines": 6}}]}, TYPES, 10
    )
    assert one.fingerprint() == spelled.fingerprint()
    assert one.fingerprint() != other.fingerprint()


BIDI_CONTROLS = [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]
# Text around one without control characters or overrides of its own.
plain_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=BIDI_CONTROLS),
    max_size=20,
)


@given(before=plain_text, bidi=st.sampled_from(BIDI_CONTROLS), after=st.text(max_size=20))
@settings(max_examples=50)
def test_a_batch_name_with_a_bidirectional_override_is_refused(
    before: str, bidi: str, after: str
) -> None:
    """A batch_name holding U+202A-E or U+2066-9 anywhere is refused (INVALID_CHARACTER) and the
    sentence names the character: on /batches it would turn the text after it around."""
    with pytest.raises(ApiError) as exc:
        plan_batch({"batch_name": before + bidi + after, "jobs": [{"job_type": "emit"}]}, TYPES, 10)
    [problem] = exc.value.extra["errors"]
    assert (problem["field"], problem["code"]) == ("batch_name", "INVALID_CHARACTER")
    # The first override is named, unless a control character after it is told first.
    assert f"U+{ord(bidi):04X}" in problem["message"] or "control" in problem["message"]


def test_a_batch_name_of_right_to_left_text_and_marks_is_accepted() -> None:
    """Hebrew or Arabic with a right-to-left mark (U+200F) reorders nothing beyond itself: kept."""
    name = "\u05d1\u05d3\u05d9\u05e7\u05d4 \u200fnightly"
    plan = plan_batch({"batch_name": name, "jobs": [{"job_type": "emit"}]}, TYPES, 10)
    assert plan.batch_name == name


def test_the_refusal_names_the_override_it_found() -> None:
    """``b<U+202E>idi`` is refused saying U+202E, not just "a bad character"."""
    with pytest.raises(ApiError) as exc:
        plan_batch({"batch_name": "b\u202eidi", "jobs": [{"job_type": "emit"}]}, TYPES, 10)
    [problem] = exc.value.extra["errors"]
    assert (problem["field"], problem["code"]) == ("batch_name", "INVALID_CHARACTER")
    assert "U+202E" in problem["message"]
