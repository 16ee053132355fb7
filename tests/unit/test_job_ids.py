"""A new job's id: a UUIDv7 in 32 hex digits, so ids sort in the order jobs were created (a new
job's lines then go at the end of ``log_lines``' key, where Postgres appends cheaply)."""

from __future__ import annotations

import itertools
import uuid

import pytest

from jobrunner.contracts import events


def test_a_job_id_is_a_uuid7_in_hex() -> None:
    """32 lowercase hex digits that read as a version-7 RFC 4122 UUID."""
    job_id = events.new_job_id()
    assert len(job_id) == 32
    assert job_id == job_id.lower()
    parsed = uuid.UUID(hex=job_id)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)


def test_a_later_job_sorts_after_an_earlier_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the random part, an id made a millisecond later sorts after the earlier one,
    and the time in milliseconds comes first."""
    now = 1_796_000_000_000
    ids = []
    for ms in (now, now + 1, now + 2) * 50:
        monkeypatch.setattr(events.time, "time_ns", lambda ms=ms: ms * 1_000_000)
        ids.append((ms, events.new_job_id()))
    for (ms_a, a), (ms_b, b) in itertools.pairwise(ids):
        if ms_a < ms_b:
            assert a < b
    assert all(job_id[:12] == f"{ms:012x}" for ms, job_id in ids)
    assert len({job_id for _, job_id in ids}) == len(ids)
