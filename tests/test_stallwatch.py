"""A service's event loop that stops turning is reported while it is stuck, with where."""

from __future__ import annotations

import asyncio
import time

import structlog

from jobrunner.common.stallwatch import StallWatch


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def test_a_loop_stuck_computing_is_reported_with_its_stack_and_when_it_turns_again() -> None:
    with structlog.testing.capture_logs() as logs:
        watch = StallWatch(stall_seconds=0.3, tick=0.05)
        watch.start()
        try:
            await asyncio.sleep(0.2)
            busy(1.0)
            await asyncio.sleep(0.3)
        finally:
            watch.stop()
    stalled = [e for e in logs if e["event"].startswith("event loop stalled")]
    ended = [e for e in logs if e["event"] == "event loop stall ended"]
    assert watch.stalls == 1
    assert len(stalled) == 1
    assert "in busy" in stalled[0]["stack"]
    assert len(ended) == 1
    assert 0.7 <= ended[0]["seconds"] < 3  # the 1 s computed, give or take the ticks


async def _watch_a_blocking_call() -> None:
    """A watch over a loop blocked 1 s in a call (asleep, not computing), then turning again."""
    watch = StallWatch(stall_seconds=0.3, tick=0.05)
    watch.start()
    try:
        time.sleep(1.0)  # noqa: ASYNC251 (the blocking call is what is watched for)
        await asyncio.sleep(0.3)
    finally:
        watch.stop()


async def test_a_loop_blocked_in_a_call_shows_it_used_little_cpu() -> None:
    with structlog.testing.capture_logs() as logs:
        await _watch_a_blocking_call()
    (stalled,) = [e for e in logs if e["event"].startswith("event loop stalled")]
    assert "time.sleep" in stalled["stack"] or "in _watch_a_blocking_call" in stalled["stack"]
    assert stalled["loop_cpu_share"] < 0.5  # asleep: no CPU, however loaded the machine


async def test_a_loop_that_keeps_turning_is_never_reported() -> None:
    with structlog.testing.capture_logs() as logs:
        watch = StallWatch(stall_seconds=0.3, tick=0.05)
        watch.start()
        try:
            for _ in range(20):
                busy(0.05)  # short pieces of work, the loop turning between them
                await asyncio.sleep(0)
        finally:
            watch.stop()
    assert watch.stalls == 0
    assert not [e for e in logs if "stall" in e["event"]]


async def test_the_watch_threads_lines_carry_the_fields_bound_for_the_log() -> None:
    """Its lines come from its own thread, and still name the service (``service=``, bound in
    ``cli``): under `jobrunner up` four services write to one output."""
    structlog.contextvars.bind_contextvars(service="runner")
    try:
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            await _watch_a_blocking_call()
    finally:
        structlog.contextvars.unbind_contextvars("service")
    stall_lines = [e for e in logs if e["event"].startswith("event loop stall")]
    assert len(stall_lines) == 2  # stalled, ended
    assert all(e.get("service") == "runner" for e in stall_lines), stall_lines
