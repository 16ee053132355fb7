"""Events on the wire: JSON tagged by ``type``, forward compatible, de-duplicated by event id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.contracts import codec, events

AT = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)

EXAMPLES: list[events.Event] = [
    events.JobRequested(job_id="j1", job_type="scraper", parameters={"plz": "10"}, lock="s"),
    events.CancelRequested(job_id="j1", requested_by="alice", reason="wrong file"),
    events.StatusChanged(
        job_id="j1",
        status=events.JobStatus.FAILED,
        exit_code=2,
        error=events.ErrorInfo(code="EXIT_NONZERO", message="The tool exited with 2."),
        result={"found": 3},
    ),
    events.LineLogged(job_id="j1", lines=[events.LogLine(1, "stdout", "INFO", AT, "hello ✓")]),
    events.ProgressReported(job_id="j1", current=4, total=8, percent=50.0, phase="enrich"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_type_survives_the_wire(event: events.Event) -> None:
    """An event decodes to exactly what was encoded, including its id and time."""
    assert codec.decode(codec.encode(event)) == event


def test_encoded_event_is_tagged_with_its_type() -> None:
    """Other systems reading the stream see the event's type by name in the JSON."""
    body = msgspec.json.decode(codec.encode(EXAMPLES[0]))
    assert (body["type"], body["version"]) == ("JobRequested", 1)


def test_log_lines_travel_as_arrays() -> None:
    """A log line is a compact array on the wire: [seq, stream, level, timestamp, text]."""
    body = msgspec.json.decode(codec.encode(EXAMPLES[3]))
    assert body["lines"] == [[1, "stdout", "INFO", "2026-01-31T12:00:00Z", "hello ✓"]]


def test_headers_carry_the_event_id_for_deduplication() -> None:
    """A publish retry carries the same Nats-Msg-Id, so JetStream stores the event once."""
    event = EXAMPLES[1]
    assert codec.headers(event) == {"Nats-Msg-Id": event.event_id}


def test_unknown_event_type_is_skipped() -> None:
    """An event type from a newer version decodes to None, so old consumers keep going."""
    assert codec.decode(b'{"type":"BatchCreated","job_id":"j1","batch":7}') is None


def test_unknown_fields_are_ignored() -> None:
    """A field added by a newer version is ignored by this one."""
    data = codec.encode(EXAMPLES[1])[:-1] + b',"added_later":[1,2]}'
    assert codec.decode(data) == EXAMPLES[1]


def test_known_type_with_a_bad_field_is_an_error() -> None:
    """A known event whose field has the wrong type is an error, not silently skipped."""
    with pytest.raises(msgspec.ValidationError, match="status"):
        codec.decode(b'{"type":"StatusChanged","job_id":"j1","status":"exploded"}')


def test_terminal_events_of_one_job_share_an_id() -> None:
    """Two parties ending the same job publish one id, so only the first end is stored."""
    assert events.terminal_event_id("j1") == events.terminal_event_id("j1") != "j1"


def test_event_ids_are_unique() -> None:
    """Each new event gets its own id."""
    assert len({events.JobRequested(job_id="j", job_type="t").event_id for _ in range(50)}) == 50


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["type", "job_id", "status", "lines", "x"]), inner)
    ),
    max_leaves=10,
)
TYPES = st.sampled_from([*(t.__struct_config__.tag for t in events.EVENT_TYPES), "Other"])


@settings(deadline=None)
@given(st.one_of(JSON, st.dictionaries(st.just("type"), JSON | TYPES, min_size=1)))
def test_any_json_on_the_stream_decodes_skips_or_raises_a_msgspec_error(body: Any) -> None:
    """Whatever JSON a stream holds, decoding gives an event, None, or an error consumers catch."""
    data = msgspec.json.encode(body)
    try:
        decoded = codec.decode(data)
    except msgspec.MsgspecError:
        return
    assert decoded is None or isinstance(decoded, events.Event)


@pytest.mark.parametrize("kind", [b"[1]", b'{"a":1}', b"null", b"7"])
def test_event_whose_type_is_not_a_name_is_skipped(kind: bytes) -> None:
    """A message whose "type" is a list, object or number is no event this version knows."""
    assert codec.decode(b'{"type":%b,"job_id":"j1"}' % kind) is None


@pytest.mark.parametrize("kind", ["JobRequested", "SomethingNewer"])
def test_deeply_nested_message_is_a_decode_error(kind: str) -> None:
    """A message nested thousands of levels deep is an error consumers already set aside."""
    data = b'{"type":"%b","job_id":"j","job_type":"t","parameters":{"a":%b%b}}' % (
        kind.encode(),
        b"[" * 5000,
        b"]" * 5000,
    )
    with pytest.raises(msgspec.DecodeError, match="nested"):
        codec.decode(data)


def test_a_decoded_event_says_whether_its_message_carried_its_time() -> None:
    """A missing ``occurred_at`` is filled in with the moment of decoding; the projector sets
    such an event aside (its time would differ at every reading) and must tell it from any
    time a message names, ahead of this clock or not, without parsing the message again."""
    without = b'{"type":"JobRequested","job_id":"j","job_type":"scraper","parameters":{}}'
    event = codec.decode(without)
    assert event is not None
    assert not events.names_its_time(event)
    ahead = datetime.now(UTC) + timedelta(days=1)
    for stamp in (
        ahead.isoformat().replace("+00:00", "Z"),
        ahead.isoformat(),
        "2020-01-01T02:00:00+02:00",
    ):
        data = without[:-1] + f',"occurred_at":"{stamp}"}}'.encode()
        named = codec.decode(data)
        assert named is not None
        assert events.names_its_time(named), stamp
        assert named.occurred_at.tzinfo is not events.UNSENT_UTC
    # Encoded, a filled-in time is an ordinary UTC time.
    again = codec.decode(msgspec.json.encode(event))
    assert again is not None
    assert events.names_its_time(again)
    assert again.occurred_at == event.occurred_at
