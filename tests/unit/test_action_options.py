"""The optional body of an action on a batch or a job (services/api/action_executor.py)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.services.api.action_executor import check_options, decode_options
from jobrunner.services.api.actions import Action
from jobrunner.services.api.errors import ApiError


def refused(body: bytes) -> ApiError:
    with pytest.raises(ApiError) as exc:
        decode_options(body)
    return exc.value


def test_empty_body_means_no_options() -> None:
    """An action sent without a body takes its defaults."""
    options = decode_options(b"")
    assert (options.reason, options.job_ids) == (None, None)


def test_reason_and_job_ids_are_read() -> None:
    """A reason and a list of job ids are taken as given."""
    options = decode_options(b'{"reason": "quota", "job_ids": ["a", "b"]}')
    assert (options.reason, options.job_ids) == ("quota", ["a", "b"])


def test_reason_over_2000_characters_is_refused() -> None:
    """A reason of 2001 characters answers 422 INVALID_OPTIONS naming reason."""
    error = refused(b'{"reason": "%b"}' % (b"x" * 2001))
    assert (error.status, error.code) == (422, "INVALID_OPTIONS")
    assert "reason" in error.message


@pytest.mark.parametrize("text", ["a\\u0000b", "line\\n", "\\u001b[31m", "tab\\t", "\\u009b"])
def test_reason_with_control_characters_is_refused(text: str) -> None:
    """Control characters anywhere in the reason (also a final line break) are refused."""
    error = refused(b'{"reason": "%b"}' % text.encode())
    assert (error.status, error.code) == (422, "INVALID_OPTIONS")
    # A sentence and the option's name, not msgspec's regex.
    assert error.extra["field"] == "reason"
    assert "without control characters" in error.message
    assert "regex" not in error.message


@pytest.mark.parametrize("code", [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
def test_reason_with_a_bidirectional_override_is_refused(code: int) -> None:
    """A reason holding U+202A-E or U+2066-9 ("stop <U+202E> now", shown as "stop won") is
    refused like one with control characters, the sentence saying so."""
    error = refused(b'{"reason": "stop %b now"}' % chr(code).encode())
    assert (error.status, error.code, error.extra["field"]) == (422, "INVALID_OPTIONS", "reason")
    assert "bidirectional overrides" in error.message


def test_reason_in_right_to_left_text_with_marks_is_taken() -> None:
    """Hebrew with a right-to-left mark (U+200F) is a reason like any other."""
    reason = "\u05e2\u05e6\u05d5\u05e8 \u200f now"
    assert decode_options(msgspec.json.encode({"reason": reason})).reason == reason


def test_unknown_option_is_refused() -> None:
    """An option the actions do not know answers 422 naming it."""
    error = refused(b'{"force": true}')
    assert (error.status, error.code) == (422, "INVALID_OPTIONS")
    assert "force" in error.message
    assert error.extra["field"] == "force"


def test_body_that_is_not_json_is_400() -> None:
    """A body that is not JSON answers 400 MALFORMED_JSON."""
    assert refused(b"{reason").code == "MALFORMED_JSON"


@pytest.mark.parametrize("body", [b'{"force": 1', b'{"reason": "x"'])
def test_body_cut_off_after_an_option_is_400(body: bytes) -> None:
    """A body that breaks off after an option (known or not) is not JSON: 400 MALFORMED_JSON,
    not a 422 about the option msgspec saw first."""
    error = refused(body)
    assert (error.status, error.code) == (400, "MALFORMED_JSON")


def test_unknown_option_in_whole_json_is_422_naming_it() -> None:
    """The same option in a whole JSON body answers 422 INVALID_OPTIONS with its field."""
    error = refused(b'{"force": 1}')
    assert (error.status, error.code, error.extra["field"]) == (422, "INVALID_OPTIONS", "force")


def test_job_ids_on_fail_are_refused() -> None:
    """Fail acts on the whole batch: job_ids answer 422 naming the option."""
    with pytest.raises(ApiError) as exc:
        check_options(Action.FAIL, decode_options(b'{"job_ids": ["a"]}'))
    assert (exc.value.code, exc.value.extra["field"]) == ("INVALID_OPTIONS", "job_ids")


def test_reason_on_archive_is_refused() -> None:
    """Archive records no reason: one given is refused rather than dropped."""
    with pytest.raises(ApiError) as exc:
        check_options(Action.ARCHIVE, decode_options(b'{"reason": "old"}'))
    assert exc.value.extra["field"] == "reason"


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_are_options_or_a_client_error(body: bytes) -> None:
    """Whatever a client sends, the answer is options or a 4xx with a code, never a crash."""
    error: ApiError | None = None
    try:
        decode_options(body)
    except ApiError as exc:
        error = exc
    assert error is None or error.status in (400, 422)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(deadline=None, max_examples=300)
@given(st.dictionaries(st.sampled_from(["reason", "job_ids", "x"]), json_values, max_size=3))
def test_any_json_object_is_options_or_422(body: dict[str, object]) -> None:
    """Any JSON object is read as options or refused with 422 INVALID_OPTIONS."""
    import json

    try:
        options = decode_options(json.dumps(body).encode())
    except ApiError as exc:
        error = exc
    else:
        error = None
    if error is not None:
        assert (error.status, error.code) == (422, "INVALID_OPTIONS")
        return
    if options.reason is not None:
        assert 1 <= len(options.reason) <= 2000
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in options.reason)


def test_job_id_with_nul_is_refused() -> None:
    """A job id holding NUL (which no stored id holds) answers 422, never reaches Postgres."""
    error = refused(b'{"job_ids": ["a\\u0000b"]}')
    assert (error.status, error.code) == (422, "INVALID_OPTIONS")


def test_bad_job_id_is_named_by_its_index() -> None:
    """An empty fourth job id answers 422 naming job_ids[3], so the client knows which one."""
    error = refused(b'{"job_ids": ["a", "b", "c", ""]}')
    assert (error.status, error.code, error.extra["field"]) == (
        422,
        "INVALID_OPTIONS",
        "job_ids[3]",
    )
    assert "job_ids[3]" in error.message


def test_long_unknown_option_is_echoed_cut_short() -> None:
    """An unknown option named with 5000 characters is echoed by its first 100 only."""
    error = refused(b'{"%b": 1}' % (b"x" * 5000))
    assert error.code == "INVALID_OPTIONS"
    assert error.extra["field"] == "x" * 100 + "\u2026"
    assert "x" * 100 + "\u2026" in error.message
    assert "x" * 101 not in error.message
