"""Pure parts of the projector, no server: storable values, data errors, the stall verdict."""

from __future__ import annotations

import asyncpg
import msgspec

from jobrunner.services.projector import setaside, storable
from jobrunner.services.projector.watchdog import is_stalled


def test_nul_becomes_a_visible_sign_in_text_and_json() -> None:
    """NUL in any string or key is stored as ␀, nothing else changes."""
    assert storable.text("a\x00b") == "a\u2400b"
    assert storable.json_value({"k\x00": ["v\x00", 1, 2.5, None, {"x": True}]}) == {
        "k\u2400": ["v\u2400", 1, 2.5, None, {"x": True}]
    }


def test_integers_are_clamped_or_dropped_at_the_column_range() -> None:
    """Counts stop at the integer column's ends; an exit code outside it becomes none."""
    assert storable.clamp_int4(2**31) == storable.INT4_MAX
    assert storable.clamp_int4(-(2**40)) == storable.INT4_MIN
    assert storable.clamp_int4(7) == 7
    assert storable.int4_or_none(2**31) is None
    assert storable.int4_or_none(storable.INT4_MAX) == storable.INT4_MAX


def test_a_percentage_stays_within_0_and_100() -> None:
    """A percentage of 1e300 shows as 100, a negative one as 0, NaN as none."""
    assert (storable.percent(1e300), storable.percent(-3.0), storable.percent(42.5)) == (
        100.0,
        0.0,
        42.5,
    )
    assert storable.percent(float("nan")) is None


def test_data_errors_are_set_aside_and_outages_are_not() -> None:
    """Errors from an event's data are told apart from a lost connection."""
    assert setaside.is_data_error(asyncpg.DataError("value out of range"))
    assert setaside.is_data_error(asyncpg.CharacterNotInRepertoireError("0x00"))
    assert setaside.is_data_error(msgspec.ValidationError("bad"))
    assert not setaside.is_data_error(asyncpg.InterfaceError("connection is closed"))
    assert not setaside.is_data_error(ConnectionResetError())
    assert not setaside.is_data_error(asyncpg.AdminShutdownError("shutting down"))


def test_the_projector_is_stalled_only_past_the_limit_with_events_waiting() -> None:
    """Stalled: events wait and nothing moved for longer than the limit; not just under it."""
    assert not is_stalled(checkpoint=5, stream_last=9, idle_seconds=9.9, stuck_after=10.0)
    assert is_stalled(checkpoint=5, stream_last=9, idle_seconds=10.1, stuck_after=10.0)
    assert not is_stalled(checkpoint=9, stream_last=9, idle_seconds=100.0, stuck_after=10.0)
