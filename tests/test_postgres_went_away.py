"""Which failures of a command's statement mean its Postgres went away (``postgresconnect``'s
went_away_error, behind `jobrunner replay`'s POSTGRES_UNAVAILABLE "run it again"): a backend
terminated does; a statement cancelled (a statement_timeout, a DBA's pg_cancel_backend) does
not, since running it again fails the same way."""

from __future__ import annotations

import asyncpg
import pytest

from jobrunner.common import postgresconnect
from jobrunner.common.settings import Settings

pytestmark = pytest.mark.timeout(60)


async def _failure_of(database_url: str, setup: str, statement: str) -> BaseException:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(setup)
        try:
            await conn.execute(statement)
        except asyncpg.PostgresError as exc:
            failure: BaseException = exc
            return failure
        raise AssertionError(f"{statement} did not fail")
    finally:
        conn.terminate()


async def test_a_statement_timeout_is_not_postgres_gone(settings: Settings) -> None:
    """It counted as gone (QueryCanceledError is an OperatorInterventionError)."""
    failure = await _failure_of(
        settings.database_url, "SET statement_timeout = '10ms'", "SELECT pg_sleep(5)"
    )
    assert isinstance(failure, asyncpg.QueryCanceledError)
    assert postgresconnect.went_away_error(failure) is None


async def test_a_terminated_backend_is_postgres_gone(settings: Settings) -> None:
    failure = await _failure_of(
        settings.database_url, "SELECT 1", "SELECT pg_terminate_backend(pg_backend_pid())"
    )
    assert postgresconnect.went_away_error(failure) is failure
