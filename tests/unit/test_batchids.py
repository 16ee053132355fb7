"""The derived ids of a batch: a retried submission names exactly the same events and jobs."""

from __future__ import annotations

import hashlib

from jobrunner.common import batchids


def test_a_job_id_is_the_documented_hash_of_batch_and_index() -> None:
    """A client can compute the id of job 3 of a batch without asking the API."""
    expected = hashlib.sha256(b"b1:3").hexdigest()[:32]
    assert batchids.job_id("b1", 3) == expected


def test_job_ids_repeat_for_the_same_batch_and_index() -> None:
    """Submitting the same batch again names the same jobs."""
    assert [batchids.job_id("b", i) for i in range(5)] == [
        batchids.job_id("b", i) for i in range(5)
    ]


def test_job_ids_differ_across_indexes_and_batches() -> None:
    """No two jobs of a 10,000-job batch, nor of two batches, share an id."""
    ids = {batchids.job_id(b, i) for b in ("a", "b") for i in range(10_000)}
    assert len(ids) == 20_000


def test_event_ids_name_their_job_or_batch() -> None:
    """Event ids are readable: the job or batch id and what happened."""
    assert batchids.job_requested_event_id("j") == "j-requested"
    assert batchids.batch_requested_event_id("b") == "b-requested"
    assert batchids.batch_sealed_event_id("b") == "b-sealed"


def test_new_batch_ids_are_unique_hex() -> None:
    """Each submission without an Idempotency-Key gets a batch id of its own."""
    ids = {batchids.new_batch_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
