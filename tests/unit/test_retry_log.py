"""The log of a thing retried until it goes through (the projector's rebuild, its batches)."""

from __future__ import annotations

from jobrunner.services.projector.outage import RetryLog


def test_what_the_first_attempt_to_get_that_far_says_is_said_once_whatever_failed_before() -> None:
    retries = RetryLog()
    retries.failed("rebuild failed", kind="connect")  # an attempt that never got that far
    assert retries.once("rebuild begun")
    retries.failed("rebuild failed", kind="connect")
    assert not retries.once("rebuild begun")
    assert retries.once("something else")
