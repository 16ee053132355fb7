"""The lease keeper's timing: how long an outage a running job survives, and that it always
gives the lease up before the server could let it pass to another runner."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobrunner.services.runner.lease import renewal_interval, safety_margin, survivable_outage


def test_a_job_survives_an_outage_of_half_the_default_ttl_wherever_it_starts() -> None:
    """At the default 15 s TTL a cluster election of 7.5 s never costs a running job its lease."""
    assert survivable_outage(15.0) > 15.0 / 2


@given(st.floats(min_value=1.0, max_value=3600.0))
def test_the_lease_is_given_up_and_the_tool_stopped_before_the_ttl(ttl: float) -> None:
    """Whatever the TTL, the keeper's deadline plus the stop's grace ends before the lease could
    expire on the server, and a renewal falls due well before that deadline."""
    deadline = ttl - safety_margin(ttl)
    stop_grace = safety_margin(ttl) / 2
    assert deadline + stop_grace < ttl
    assert renewal_interval(ttl) < deadline / 2
    assert survivable_outage(ttl) > 0
