"""A runner warns at start of the job types whose cancel grace its stop_seconds cannot hold."""

from __future__ import annotations

from structlog.testing import capture_logs

from jobrunner.common.eventstore import CLOSE_KEEP_SECONDS
from jobrunner.common.jobtypes import JobType
from jobrunner.services.runner.service import (
    AFTER_GRACE_SECONDS,
    stop_needed_seconds,
    warn_if_stop_too_short,
)


def _type(name: str, grace: float, external: bool = False) -> JobType:
    argv = [] if external else ["true"]
    return JobType(name=name, argv=argv, cancel_grace_seconds=grace, external=external)


def test_a_stopped_job_needs_its_grace_the_drain_and_the_close() -> None:
    """The rule the README states: cancel_grace_seconds + 5 s."""
    assert AFTER_GRACE_SECONDS + CLOSE_KEEP_SECONDS == 5.0
    assert stop_needed_seconds(_type("slow", 5.0)) == 10.0


def test_only_the_types_a_stop_cuts_short_are_named() -> None:
    """With stop_seconds 9.5, a grace of 5 is named (with what to set), one of 4 not."""
    job_types = {"cut": _type("cut", 5.0), "fits": _type("fits", 4.0)}
    with capture_logs() as logs:
        warn_if_stop_too_short(job_types, 9.5)
    (warning,) = logs
    assert warning["log_level"] == "warning"
    assert warning["job_types"] == ["cut"]
    assert warning["stop_seconds_needed"] == 10.0


def test_a_stop_long_enough_or_a_type_that_runs_nothing_is_not_warned_of() -> None:
    """At the bound exactly nothing is said (the default grace, 10 s, at the default
    stop_seconds, 15 s); an external type's job runs no tool here."""
    job_types = {"edge": _type("edge", 10.0), "away": _type("away", 60.0, external=True)}
    with capture_logs() as logs:
        warn_if_stop_too_short(job_types, 15.0)
    assert logs == []
