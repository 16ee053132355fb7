"""Hypothesis examples drawn up front, for a test that sends each to a running system (a
``@given`` test would start the system again per example, or share it across examples)."""

from __future__ import annotations

from typing import TypeVar

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

T = TypeVar("T")


def examples(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` generated values (a fixed seed: the same ones every run)."""
    drawn: list[T] = []

    @hypothesis_settings(
        max_examples=count,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(value: T) -> None:
        drawn.append(value)

    draw()
    return drawn
