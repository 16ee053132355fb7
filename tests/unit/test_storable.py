"""Numbers made storable: a count moved to the nearest end of the integer column, a percentage
kept within 0..100, NaN none; the same value whichever way ``storable`` computes it."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from jobrunner.services.projector.storable import INT4_MAX, INT4_MIN, clamp_int4, percent

EDGES = [INT4_MIN - 1, INT4_MIN, INT4_MIN + 1, -1, 0, 1, INT4_MAX - 1, INT4_MAX, INT4_MAX + 1]


@given(st.sampled_from(EDGES) | st.integers() | st.integers(-(2**80), 2**80))
def test_a_count_beyond_the_integer_column_is_moved_to_its_nearest_end(value: int) -> None:
    stored = clamp_int4(value)
    assert stored == min(max(value, INT4_MIN), INT4_MAX)
    assert type(stored) is int


@given(st.sampled_from([-0.0, 0.0, 100.0, -1e-300, 100.00000000000001]) | st.floats())
def test_a_percentage_is_kept_within_0_to_100_and_nan_says_nothing(value: float) -> None:
    stored = percent(value)
    if math.isnan(value):
        assert stored is None
    else:
        expected = min(max(value, 0.0), 100.0)
        assert stored == expected
        assert math.copysign(1.0, stored) == math.copysign(1.0, expected)  # -0.0 kept as before
