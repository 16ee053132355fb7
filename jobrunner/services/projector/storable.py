"""Values made storable in Postgres before they reach a row: the projector must not depend on
every producer cleaning its output (invariant 9), so what a column cannot hold is changed here,
the same way every time (a replay must store exactly what the live projector stored).

- NUL: Postgres text and jsonb cannot hold U+0000. It becomes ``␀`` (U+2400), as the runner does
  for output lines: the reader still sees that something was there.
- Integers outside a column's range: decided per column, where the column is written
  (projections.py), with ``clamp_int4`` or ``int4_or_none``.
"""

from __future__ import annotations

from typing import Any

NUL_SIGN = "\u2400"
INT4_MIN = -(2**31)
INT4_MAX = 2**31 - 1


def text(value: str) -> str:
    """``value`` without NUL characters."""
    return value.replace("\x00", NUL_SIGN) if "\x00" in value else value


def optional_text(value: str | None) -> str | None:
    return None if value is None else text(value)


def json_value(value: Any) -> Any:
    """A JSON value (for a jsonb column) without NUL in any string or key."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {text(str(k)): json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_value(v) for v in value]
    return value


def clamp_int4(value: int) -> int:
    """``value`` moved to the nearest end of Postgres' ``integer`` range."""
    # Chained comparisons, not min/max: the usual value, in range, costs no builtin call (the
    # replay's count: ~450 instructions an event were min/max's).
    if INT4_MIN <= value <= INT4_MAX:
        return value
    return INT4_MIN if value < INT4_MIN else INT4_MAX


def int4_or_none(value: int | None) -> int | None:
    """``value``, or None when Postgres' ``integer`` cannot hold it."""
    return value if value is not None and INT4_MIN <= value <= INT4_MAX else None


def percent(value: float) -> float | None:
    """A percentage within 0..100 (outside it, it says nothing more); NaN says nothing at all."""
    if value != value:  # NaN
        return None
    if 0.0 <= value <= 100.0:
        return value
    return 0.0 if value < 0.0 else 100.0
