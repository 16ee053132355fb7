"""What the projector tells an operator to do about an error that stops it applying events."""

from __future__ import annotations

import asyncpg
import pytest

from jobrunner.services.projector import outage


def test_a_full_disk_is_told_to_free_space_not_to_start_postgres() -> None:
    """Postgres's 53100 (disk full) says the disk is full and where to free space."""
    advice = outage.what_to_do(asyncpg.DiskFullError('could not extend file "base/1/2"'))
    assert "disk is full" in advice
    assert "data directory" in advice
    assert "database_url" not in advice


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
