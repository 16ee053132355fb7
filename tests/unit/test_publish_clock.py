"""The runner's publish clock on generated times (publisher.py): a line is held at most one
window, reads and publishes of a job fall on the clock's ticks, and a job quiet for two windows
is never held."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobrunner.services.runner.publisher import pacing_wait, read_rest

times = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)
windows = st.floats(min_value=1e-5, max_value=0.05, allow_nan=False)
gaps = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def rounding(at: float) -> float:
    """How far a time near ``at`` may be off by float rounding alone."""
    return 1e-12 * max(1.0, at)


def on_a_tick(at: float, window: float) -> bool:
    return abs(at - round(at / window) * window) <= rounding(at)


@given(last=times, gap=gaps, window=windows)
def test_a_pipe_rests_at_most_a_window_and_until_a_tick(
    last: float, gap: float, window: float
) -> None:
    now = last + gap
    rest = read_rest(now, last, window)
    assert 0.0 <= rest <= window + rounding(now)
    if now - last >= 2 * window:
        assert rest == 0.0  # a line after a quiet spell is read at once
    elif rest > 0:
        assert on_a_tick(now + rest, window)


@given(last=times, gap=gaps, window=windows)
def test_a_publish_waits_at_most_a_window_and_until_a_tick(
    last: float, gap: float, window: float
) -> None:
    now = last + gap
    wait = pacing_wait(now, last, window)
    assert 0.0 <= wait <= window + rounding(now)
    if now >= last + window:
        assert wait == 0.0
    elif wait > 0:
        assert on_a_tick(now + wait, window)


@given(now=times, last=times)
def test_no_window_no_rest(now: float, last: float) -> None:
    assert read_rest(now, last, 0.0) == 0.0
    assert pacing_wait(now, last, 0.0) == 0.0
