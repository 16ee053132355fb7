"""What the projector tells an operator to do about an error that stops it applying events."""

from __future__ import annotations

import asyncpg
import pytest

from jobrunner.services.projector import outage


def test_a_full_disk_is_told_to_free_space_where_postgres_said() -> None:
    """Postgres's 53100 (disk full) says the disk is full and names the directory Postgres
    told (its data directory, or the tablespace's location) and the file it could not write."""
    error = asyncpg.DiskFullError('could not extend file "base/1/2": No space left on device')
    advice = outage.what_to_do(error, "/var/lib/postgresql/16/main")
    assert "disk is full" in advice
    assert "free space on the filesystem of /var/lib/postgresql/16/main" in advice
    assert "base/1/2" in advice
    assert "database_url" not in advice


def test_a_full_disk_not_told_where_says_how_to_ask_postgres() -> None:
    """When Postgres does not say where (data_directory is for superusers), the advice says how
    to ask it: the data directory, or the location of the tablespace the file lies in."""
    in_data = outage.what_to_do(asyncpg.DiskFullError('could not extend file "base/1/2"'))
    assert "SHOW data_directory" in in_data
    assert "base/1/2" in in_data
    tablespace_file = "pg_tblspc/16385/PG_16_202307071/5/16390"
    in_tablespace = outage.what_to_do(
        asyncpg.DiskFullError(f'could not extend file "{tablespace_file}"')
    )
    assert "tablespace 16385" in in_tablespace
    assert "pg_tablespace_location(16385)" in in_tablespace


@pytest.mark.parametrize(
    "error", [asyncpg.OutOfMemoryError, asyncpg.ConfigurationLimitExceededError]
)
def test_another_shortage_is_told_to_give_postgres_what_it_lacks(error: type) -> None:
    """Out of memory or a configuration limit: give Postgres what the error names."""
    assert outage.what_to_do(error("short")) == outage.WHAT_TO_DO_ON_SHORT_RESOURCES


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(),
        asyncpg.TooManyConnectionsError("full"),
        asyncpg.AdminShutdownError("x"),
    ],
)
def test_postgres_away_is_told_to_start_it_or_check_the_url(error: BaseException) -> None:
    """A Postgres stopped, restarting or out of connections: start it or check database_url."""
    assert outage.what_to_do(error) == outage.WHAT_TO_DO
