"""The raw event history: one stored message as auditors and ``jobrunner events`` see it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.msg import Msg

from jobrunner.common.audit import stored_event, subject_filter
from jobrunner.contracts.names import Names

STORED_AT_NS = 1_769_860_800_000_000_000  # 2026-01-31T12:00:00Z


def message(data: bytes, seq: int = 42) -> Msg:
    """A message as JetStream delivers it: its reply subject carries sequence and time."""
    client: Any = None
    return Msg(
        _client=client,
        subject="jobrunner.job.j1.status",
        reply=f"$JS.ACK.JOBRUNNER_EVENTS.reader.1.{seq}.1.{STORED_AT_NS}.0",
        data=data,
    )


def test_stored_event_carries_sequence_subject_time_and_body() -> None:
    """Each event is shown with its stream sequence, subject, storage time and JSON as published."""
    stored = stored_event(message(b'{"type":"Future","x":1}'))
    assert stored.stream_seq == 42
    assert stored.subject == "jobrunner.job.j1.status"
    assert stored.time == datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert stored.event == {"type": "Future", "x": 1}


@pytest.mark.parametrize(
    ("data", "shown"),
    [(b"not json \xff", "not json \ufffd"), (b"[" * 5000 + b"]" * 5000, "[" * 5000 + "]" * 5000)],
    ids=["malformed", "nested-too-deep"],
)
def test_message_that_is_not_json_is_shown_as_text(data: bytes, shown: str) -> None:
    """A stored message that cannot be read as JSON is shown as its text, not an error."""
    assert stored_event(message(data)).event == {"undecodable": shown}


def test_history_of_one_job_or_all() -> None:
    """The history filter is one job's subjects, or every event (jobs and batches)."""
    names = Names("acme")
    assert subject_filter(names, None) == "acme.>"
    assert subject_filter(names, "j-1_a") == "acme.job.j-1_a.>"


@pytest.mark.parametrize("job_id", ["a.b", "*", ">", "a b", "", "x" * 129, "j1\n"])
def test_job_id_that_would_widen_the_filter_is_refused(job_id: str) -> None:
    """A job id with dots, wildcards or spaces is refused, so it cannot read other jobs' events."""
    with pytest.raises(ValueError, match="is not a job id"):
        subject_filter(Names("acme"), job_id)
