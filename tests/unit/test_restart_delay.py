"""How long `jobrunner up` waits before restarting a service that exited: growing while it
crash-loops, and from the shortest wait again once it had run stably (crashes days apart must
not each wait the longest)."""

from __future__ import annotations

from jobrunner.supervisor import (
    FIRST_RESTART_SECONDS,
    LONGEST_RESTART_SECONDS,
    STABLE_RUN_SECONDS,
    restart_delay,
)


def test_a_first_crash_is_restarted_after_the_shortest_wait() -> None:
    assert restart_delay(0, 0.1) == (1, FIRST_RESTART_SECONDS)


def test_a_crash_loop_waits_longer_each_time_up_to_the_longest() -> None:
    restarts, waits = 0, []
    for _ in range(8):
        restarts, delay = restart_delay(restarts, 1.0)
        waits.append(delay)
    assert restarts == 8
    assert waits == sorted(waits)
    assert waits[0] == FIRST_RESTART_SECONDS
    assert waits[-1] == LONGEST_RESTART_SECONDS


def test_a_service_that_ran_stably_is_restarted_after_the_shortest_wait_whatever_before() -> None:
    assert restart_delay(50, STABLE_RUN_SECONDS) == (1, FIRST_RESTART_SECONDS)
    assert restart_delay(50, 3 * 86400.0) == (1, FIRST_RESTART_SECONDS)


def test_a_service_that_exited_just_before_running_stably_still_counts_as_crash_looping() -> None:
    restarts, delay = restart_delay(50, STABLE_RUN_SECONDS - 0.01)
    assert (restarts, delay) == (51, LONGEST_RESTART_SECONDS)
