"""Waiting for processes held by pidfd (``processtree.wait_ended``), the bound of
``EmbeddedPostgres.kill``: a process that ends within the bound is waited out, one that runs
past it is named. Plain processes, no server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from jobrunner.embedded import processtree

pytestmark = pytest.mark.timeout(60)

BOUND = 3.0


@contextmanager
def held_sleep(seconds: float) -> Iterator[tuple[int, dict[int, int]]]:
    """A process that ends after ``seconds`` on its own, held by a pidfd (its pid, the hold)."""
    proc = subprocess.Popen(["sleep", str(seconds)])
    pidfd = os.pidfd_open(proc.pid)
    try:
        yield proc.pid, {proc.pid: pidfd}
    finally:
        os.close(pidfd)
        proc.kill()
        proc.wait()


def test_a_process_ending_just_before_the_bound_is_waited_out() -> None:
    """Ending at 0.7 of the bound (a zombie then: this test reaps it only later), the process
    counts as ended, and nothing is named."""
    with held_sleep(BOUND * 0.7) as (_, held):
        assert processtree.wait_ended(held, BOUND) == []


def test_a_process_running_just_past_the_bound_is_named() -> None:
    """Still running at the bound (it ends at 1.5 of it), the process is named."""
    with held_sleep(BOUND * 1.5) as (pid, held):
        assert processtree.wait_ended(held, BOUND) == [pid]


def test_a_hold_is_refused_to_a_process_that_no_longer_qualifies() -> None:
    """A process that fails the check made once its pidfd is open is not held."""
    with held_sleep(600) as (pid, _):
        assert processtree.hold(pid, lambda _: False) is None
        pidfd = processtree.hold(pid, lambda _: True)
        assert pidfd is not None
        os.close(pidfd)
