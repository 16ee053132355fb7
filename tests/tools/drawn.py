"""Values drawn by Hypothesis ahead of a test against real servers: an async test that starts
NATS and Postgres once cannot be a ``@given`` test, so it loops over these instead."""

from __future__ import annotations

from typing import TypeVar

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

T = TypeVar("T")


def examples(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` values of ``strategy``, the same ones at every run (derandomized)."""
    drawn: list[T] = []

    @hypothesis_settings(
        max_examples=count, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(strategy)
    def draw(value: T) -> None:
        drawn.append(value)

    draw()
    return drawn
