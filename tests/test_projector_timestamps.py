"""The projector's encoding of ``timestamptz`` (timestamps.py) stores exactly what asyncpg's
own does, or fails where it fails: a line's time, a job's times, in a ``COPY`` and as a
parameter, for any time an event can hold (any offset msgspec accepts, ±23:59), any time in a
named zone (a ``ZoneInfo``, whose repeated hour is two instants) and the values around the edges
(naive times, dates, Python's first and last instants, Postgres' infinities). Naive times and
dates are local times, so every case runs in zones other than UTC as well."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from jobrunner.common import database
from jobrunner.common.settings import Settings
from jobrunner.services.projector import timestamps

ONE_CONNECTION = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware = st.datetimes(timezones=st.one_of(st.just(UTC), offsets))
edges = st.sampled_from(
    [
        datetime.max,
        datetime.min,
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-3))),
        datetime(1, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=5))),
        datetime(1, 1, 1, 23, 59, tzinfo=timezone(timedelta(hours=23, minutes=59))),
        datetime(2000, 1, 1, tzinfo=UTC),
        date(2026, 3, 29),
        date.max,
    ]
)
# Events hold fixed offsets only, but the encoder serves every timestamptz parameter: any zone.
zoned = st.datetimes(timezones=st.timezones())
values = st.one_of(aware, aware, zoned, st.datetimes(), st.dates(), edges)


@pytest.fixture(params=["UTC", "Europe/Berlin", "America/St_Johns"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """The process' local time zone for one test: where local time is UTC, taking a naive time
    as UTC instead of local time goes unseen; Berlin and St. John's (-03:30, both with summer
    time) do not forgive it."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.fixture
async def connections(settings: Settings, local_zone: str) -> AsyncIterator[tuple[Any, Any]]:
    """asyncpg's encoding and the projector's, on two connections to one database, the
    sessions' ``TimeZone`` the process' own (it reads a time without an offset, and writes the
    times read back as text)."""
    zone = {"TimeZone": local_zone}
    theirs = await asyncpg.connect(settings.database_url, server_settings=zone)
    ours = await asyncpg.connect(settings.database_url, server_settings=zone)
    await database.init_connection(theirs)
    await timestamps.init_connection(ours)
    try:
        yield theirs, ours
    finally:
        await theirs.close()
        await ours.close()


def assert_same(ours: Any, theirs: Any) -> None:
    """Equal, and alike: ``==`` between datetimes ignores their ``tzinfo``."""
    assert ours == theirs
    assert type(ours) is type(theirs)
    assert getattr(ours, "tzinfo", None) is getattr(theirs, "tzinfo", None)
    assert repr(ours) == repr(theirs)


async def outcome(call: Any) -> Any:
    try:
        return await call
    except Exception as exc:  # the same error, or the same value: both count
        return type(exc).__name__


def alike(value: Any) -> list[Any]:
    """``value`` and the values equal to it or to its wall time: the same instant at other
    offsets, the same wall time naive and aware, and the other ``fold`` (a summer-time change's
    repeated hour, the same naive wall time twice). An encoder that remembers the last time it
    encoded must tell these apart where their instants differ."""
    found = [value]
    if isinstance(value, datetime):
        found.append(value.replace(fold=1 - value.fold))
        if value.tzinfo is None:
            found.append(value.replace(tzinfo=UTC))
        else:
            found.append(value.replace(tzinfo=None))
            for offset in (UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-3.5))):
                # (beyond Python's range at that offset near its ends: left out)
                with contextlib.suppress(OverflowError):
                    found.append(value.astimezone(offset))
    return found


BERLIN = ZoneInfo("Europe/Berlin")
# Wall times that are two instants in Berlin (2026-10-25) or St. John's (2026-11-01) by fold:
# naive (in the local zone) and in those zones.
repeated_hours = st.sampled_from(
    [
        datetime(2026, 10, 25, 2, 30),
        datetime(2026, 11, 1, 1, 30, 15, 7),
        datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN),
        datetime(2026, 11, 1, 1, 30, 15, 7, tzinfo=ZoneInfo("America/St_Johns")),
    ]
)
# Batches of few distinct times, each many times and next to its look-alikes, as a flood's lines
# carry the time of the read that brought them.
runs = (
    st.lists(st.one_of(values, repeated_hours), min_size=1, max_size=3)
    .map(lambda chosen: [twin for value in chosen for twin in alike(value)])
    .flatmap(lambda pool: st.lists(st.sampled_from(pool), min_size=1, max_size=40))
)


async def assert_stored_as_asyncpg_stores(connections: tuple[Any, Any], batch: list[Any]) -> None:
    """Each value as a parameter, then the batch as a ``COPY``: the same instants stored (read
    back as text, by neither decoder), or the same error."""
    theirs, ours = connections
    for value in batch:
        query = "SELECT $1::timestamptz::text"
        assert await outcome(ours.fetchval(query, value)) == await outcome(
            theirs.fetchval(query, value)
        ), value
    stored = []
    for conn in (theirs, ours):
        await conn.execute("CREATE TEMP TABLE IF NOT EXISTS times (n int, ts timestamptz)")
        await conn.execute("TRUNCATE times")
        copied = await outcome(conn.copy_records_to_table("times", records=list(enumerate(batch))))
        rows = await conn.fetch("SELECT n, ts::text FROM times ORDER BY n")
        stored.append((copied if isinstance(copied, str) else None, [tuple(r) for r in rows]))
    assert stored[1] == stored[0]


@examples(max_examples=150, deadline=None, suppress_health_check=ONE_CONNECTION)
@given(batch=st.lists(values, min_size=1, max_size=20))
async def test_stored_times_are_the_ones_asyncpg_stores(
    connections: tuple[Any, Any], batch: list[Any]
) -> None:
    """Any times, as parameters and in a ``COPY``: stored as asyncpg stores them."""
    await assert_stored_as_asyncpg_stores(connections, batch)


@examples(max_examples=100, deadline=None, suppress_health_check=ONE_CONNECTION)
@given(batch=runs)
async def test_repeated_and_look_alike_times_are_stored_as_asyncpg_stores_them(
    connections: tuple[Any, Any], batch: list[Any]
) -> None:
    """A time repeated many times in a row (a flood's lines), beside the same instant at other
    offsets and the same wall time naive or in a repeated hour: each stored as asyncpg stores it."""
    await assert_stored_as_asyncpg_stores(connections, batch)


async def test_a_repeated_hour_after_its_twin_is_stored_as_its_own_instant(
    connections: tuple[Any, Any],
) -> None:
    """The same naive wall time twice in a row, once per side of the hour a summer-time change
    repeats, and an aware time beside its naive twin: two instants each, as asyncpg stores."""
    twice = datetime(2026, 10, 25, 2, 30)  # Berlin; in St. John's, 2026-11-01 01:30
    batch = [
        twice,
        twice.replace(fold=1),
        datetime(2026, 11, 1, 1, 30),
        datetime(2026, 11, 1, 1, 30, fold=1),
        twice.replace(tzinfo=UTC),
        twice,
        twice.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=5))),
    ]
    await assert_stored_as_asyncpg_stores(connections, batch)


async def test_a_zoned_time_in_a_repeated_hour_after_its_twin_is_stored_as_its_own_instant(
    connections: tuple[Any, Any],
) -> None:
    """Berlin's 02:30 on 2026-10-25, first in summer time, then an hour later in winter time
    (the same zone object and wall time, another ``fold``): two instants, as asyncpg stores."""
    first = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN)
    await assert_stored_as_asyncpg_stores(connections, [first, first.replace(fold=1)])


def days_at_the_ends_of_pythons_range() -> list[datetime]:
    """The first and last days the encoder takes the careful way and the days next to them,
    each ±1 µs, at UTC and the largest offsets either side (those a UTC conversion can overflow
    with)."""
    days = [datetime(1, 1, 2), datetime(1, 1, 3)]
    days += [datetime(9999, 12, 29), datetime(9999, 12, 30), datetime(9999, 12, 31)]
    offsets = [
        UTC,
        timezone(timedelta(hours=23, minutes=59)),
        timezone(-timedelta(hours=23, minutes=59)),
    ]
    times = []
    for day in days:
        for step in (-1, 0, 1):
            instant = day.replace(tzinfo=UTC) + timedelta(microseconds=step)
            for offset in offsets:
                times.append(instant.astimezone(offset))
    return times


async def test_times_at_the_ends_of_pythons_range_are_stored_as_asyncpg_stores_them(
    connections: tuple[Any, Any],
) -> None:
    """Times in the two days at each end of Python's range that the encoder treats carefully,
    and those just inside, at any offset: stored as asyncpg stores them, each after another
    time and once more right after itself (the encoder keeps the last time it encoded)."""
    edges = days_at_the_ends_of_pythons_range()
    await assert_stored_as_asyncpg_stores(connections, edges)
    for value in edges:
        await assert_stored_as_asyncpg_stores(
            connections, [datetime(2020, 1, 1, tzinfo=UTC), value, value]
        )


async def test_read_times_are_the_ones_asyncpg_reads(connections: tuple[Any, Any]) -> None:
    """Decoding too (the projector's connections read few times, but read them alike)."""
    theirs, ours = connections
    texts = [
        "infinity",
        "-infinity",
        "2026-03-29 02:30:00.123456+02",
        "0001-01-01 00:00:00+00",
        "9999-12-31 23:59:59.999999+00",
        "2000-01-01 00:00:00+00",
        "1999-12-31 23:59:59.999999+00",
        "0001-01-01 00:00:00+05",
        "10000-01-01 00:00:00+00",
        "4713-01-01 00:00:00+00 BC",
        "2026-03-29 02:30:00",  # in the session's TimeZone: a summer-time gap in Berlin
        "2026-10-25 02:30:00",  # and an hour that comes twice there
    ]
    for text in texts:
        query = "SELECT $1::text::timestamptz"
        assert_same(
            await outcome(ours.fetchval(query, text)), await outcome(theirs.fetchval(query, text))
        )
    readable = texts[:7] + texts[-2:]
    query = "SELECT array_agg(t::timestamptz) FROM unnest($1::text[]) AS t"
    read = await ours.fetchval(query, readable), await theirs.fetchval(query, readable)
    assert len(read[0]) == len(read[1]) == len(readable)
    for mine, asyncpgs in zip(*read, strict=True):
        assert_same(mine, asyncpgs)
