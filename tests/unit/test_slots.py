"""Lock slots: which KV key a job's lease and queue place live under."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.common.slots import key_safe, queue_key, slot_key

# What NATS accepts in a KV key; '.' only as a separator between tokens.
KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def test_jobs_naming_one_lock_share_one_slot() -> None:
    """Two jobs of types naming the same lock compete for the same slot."""
    assert slot_key("datev_sheet", "job1") == slot_key("datev_sheet", "job2") == "slot.datev_sheet"


def test_job_without_a_lock_gets_a_slot_of_its_own() -> None:
    """A job whose type names no lock has its own lease key, so it never waits for another."""
    assert slot_key(None, "job1") == "job.job1"
    assert slot_key("", "job1") != slot_key("", "job2")


def test_queue_place_is_per_lock_and_job() -> None:
    """A queued job's place is keyed by its lock and its own id."""
    assert queue_key("datev sheet", "j1") == "queue.datev_sheet.j1"


@settings(deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_lock_name_makes_a_valid_key(lock: str) -> None:
    """Whatever a lock is called in the job-types file, its key is one valid KV token."""
    token = key_safe(lock)
    assert token
    assert set(token) <= KEY_CHARS
    assert slot_key(lock, "j").split(".", 1)[1] == token


@settings(deadline=None)
@given(st.text(max_size=40), st.text(min_size=1, max_size=40))
def test_slot_and_queue_keys_never_collide(lock: str, job_id: str) -> None:
    """A lock's slot, a lock-free job's slot and a queue place are different keys."""
    keys = {slot_key(lock or None, job_id), queue_key(lock, job_id), slot_key(None, job_id)}
    assert len(keys) == (2 if not lock else 3)


def test_attempts_of_one_job_without_a_lock_share_one_slot() -> None:
    """A restarted job's new attempt waits for the slot of the attempt it replaces."""
    first = slot_key(None, "first")
    assert slot_key(None, "second", attempt_of="first") == first
    assert slot_key(None, "other") != first
    assert slot_key("sheet", "second", attempt_of="first") == slot_key("sheet", "x")
