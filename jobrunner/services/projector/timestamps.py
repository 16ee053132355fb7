"""The projector's encoding of ``timestamptz`` values: asyncpg's, exactly, at under half its cost.

Every line the projector and a replay write carries a time, every job row four: a replay of a
million events encodes about 1.6 million of them. asyncpg's own encoder first compares each
value with its naive ``datetime.max`` and ``datetime.min`` (its infinities); for an aware value,
as every event's is, CPython answers that equality through both values' ``utcoffset`` and the
reflected comparison, which costs as much as the conversion itself (1.3 µs for all of it against
0.55 µs here, timeit on this machine). An aware value never equals a naive one, so for the usual
value the instant in microseconds since Postgres' epoch is computed directly: the same integer
asyncpg writes (the difference of two aware datetimes is taken in UTC, as its
``astimezone(utc)`` does). Anything else (naive values, dates, instants in the first two or the
last two days of Python's range: within a day of its ends asyncpg's conversion overflows or its
infinities lie, and the second day is the margin of comparing whole days) goes the way asyncpg
goes, step by step, so the stored value, or the error that sets an event aside, is the same.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import asyncpg

from jobrunner.common import database

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # Postgres' epoch: its timestamps count from here
_MICROSECOND = timedelta(microseconds=1)
# Postgres' infinities in the binary format, and the datetimes asyncpg maps to them.
PG_INFINITY = 0x7FFFFFFFFFFFFFFF
PG_NEGATIVE_INFINITY = -0x8000000000000000
_INFINITY = datetime.max
_NEGATIVE_INFINITY = datetime.min
_INFINITY_MICROS = (_INFINITY.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_NEGATIVE_INFINITY_MICROS = (_NEGATIVE_INFINITY.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
# Instants from 0001-01-03 to 9999-12-29 (UTC): asyncpg's conversion to UTC cannot overflow
# there, nor can the instant be one of its infinities. The careful band is two days at each end
# (one is enough; whole days in the comparison make it two).
# Counted in whole days (the difference's ``days``): one of the interpreter's 30-bit digits,
# compared in its specialised fast path, where the microseconds since 2000 take two digits and
# the generic comparison (~160 instructions more a time the encoder has not just encoded,
# bench/RESULTS.md, session 41).
_SAFE_FROM_DAYS = (datetime(1, 1, 2, tzinfo=UTC) - _EPOCH).days
_SAFE_UNTIL_DAYS = (datetime(9999, 12, 30, tzinfo=UTC) - _EPOCH).days


# The last time encoded the usual way with a fixed offset (a ``datetime.timezone``, as every
# event's time has), and its encoding. The runner stamps every line of one read of a tool's pipe
# with the same time, so a flood's ``COPY`` encodes runs of hundreds of equal times: one
# comparison answers those (two datetimes of one ``tzinfo`` compare their fields in C) instead of
# the subtraction and arithmetic. Only a fixed offset's time is kept, as only its equals are all
# the same instant: of one ``tzinfo`` object, equal fields with a fixed offset are one instant,
# and across ``tzinfo`` objects equality is by instant. Two times of one zone with summer time
# (a ``ZoneInfo``) compare by their wall times, ``fold`` ignored, so both sides of the hour a
# summer-time change repeats would be equal; naive values too, by their wall time alone.
# Two globals, not one (time, encoding) pair: the encoder runs synchronously inside asyncpg's
# encoding of a statement's or ``COPY``'s values, on the event loop's thread, so no other caller
# comes between its two updates, and the pair's subscripts cost 102 instructions a call more
# (callgrind, 200,000 calls; bench/RESULTS.md, session 39). Called from threads, it would need one.
_last_value: Any = None
_last_encoded = (0,)


def encode(value: Any) -> tuple[int]:
    """``value`` as asyncpg's ``tuple`` format for ``timestamptz``: (microseconds since 2000,)."""
    global _last_value, _last_encoded
    if value == _last_value:
        return _last_encoded
    try:
        delta = value - _EPOCH
    except TypeError:  # a naive value, or a date
        return (_as_asyncpg_does(value),)
    days = delta.days
    if _SAFE_FROM_DAYS < days < _SAFE_UNTIL_DAYS:
        # Its three fields, not ``delta // _MICROSECOND``: that converts both timedeltas to
        # microseconds, the constant too, every time.
        encoded = ((days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds,)
        if type(value.tzinfo) is timezone:
            _last_value, _last_encoded = value, encoded
        return encoded
    return (_as_asyncpg_does(value),)


def _as_asyncpg_does(value: Any) -> int:
    """asyncpg's ``timestamptz_encode`` (asyncpg/pgproto/codecs/datetime.pyx), step by step."""
    if not isinstance(value, datetime):
        if not isinstance(value, date):
            raise TypeError(
                "expected a datetime.date or datetime.datetime instance, "
                f"got {type(value).__name__!r}"
            )
        local = datetime.now(UTC).astimezone().utcoffset()
        assert local is not None
        value = datetime(value.year, value.month, value.day, tzinfo=timezone(local))
    if value == _INFINITY:
        return PG_INFINITY
    if value == _NEGATIVE_INFINITY:
        return PG_NEGATIVE_INFINITY
    delta: timedelta = value.astimezone(UTC) - _EPOCH  # a naive value is taken as the local time
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if micros == _INFINITY_MICROS:
        return PG_INFINITY
    if micros == _NEGATIVE_INFINITY_MICROS:
        return PG_NEGATIVE_INFINITY
    return micros


def decode(value: tuple[int]) -> datetime:
    """asyncpg's ``timestamptz_decode``: an aware UTC datetime, or its naive infinities."""
    micros = value[0]
    if micros == PG_INFINITY:
        return _INFINITY
    if micros == PG_NEGATIVE_INFINITY:
        return _NEGATIVE_INFINITY
    return _EPOCH + timedelta(microseconds=micros)


async def init_connection(conn: asyncpg.Connection) -> None:
    """The shared set-up (``database.init_connection``) and this encoding of ``timestamptz``."""
    await database.init_connection(conn)
    await conn.set_type_codec(
        "timestamptz", encoder=encode, decoder=decode, schema="pg_catalog", format="tuple"
    )
