"""A service's log while Postgres is away: asyncpg's pool, reopening its minimum of connections,
says so in one line with the error, not a traceback per attempt (a dozen for a 30 s restart)."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
from collections.abc import Iterator

import asyncpg
import pytest

from jobrunner.common import database
from jobrunner.common.logging import PostgresAwayInOneLine, configure_logging
from jobrunner.embedded.postgres import EmbeddedPostgres
from tests.tools.logging_state import logging_put_back

POOL_RETRY = "Failed to restore the pool connection floor"


@pytest.fixture
def json_logging() -> Iterator[None]:
    """configure_logging's changes put back for the other tests."""
    with logging_put_back():
        yield


async def test_pool_retries_while_postgres_is_down_log_one_line_each(
    json_logging: None, capsys: pytest.CaptureFixture[str], own_postgres: EmbeddedPostgres
) -> None:
    """Postgres stopped under a pool: each retry is one readable JSON line, no traceback."""
    configure_logging("info", "json")  # binds the captured stderr
    pool = await database.create_pool(
        own_postgres.url, min_size=1, connect=database.connect_or_unreachable
    )
    try:
        await asyncio.to_thread(own_postgres.stop)  # closes the pool's connection: it reconnects
        written = ""
        async with asyncio.timeout(30):
            while POOL_RETRY not in written:
                await asyncio.sleep(0.1)
                written += capsys.readouterr().err
    finally:
        pool.terminate()
    retries = [line for line in written.splitlines() if POOL_RETRY in line]
    assert retries, written
    for line in retries:
        record = json.loads(line)  # one line each, whole
        assert "exception" not in record, line
        assert "Postgres away" in record["event"], line
    assert "Traceback" not in written, written


def test_any_other_error_keeps_its_traceback() -> None:
    """Only Postgres away is shortened: an unexpected error still shows where it happened."""
    try:
        raise ValueError("a bug")
    except ValueError:
        record = logging.LogRecord("asyncpg.pool", logging.WARNING, "", 0, "m", (), sys.exc_info())
    assert PostgresAwayInOneLine().filter(record)
    assert record.exc_info is not None
    assert record.getMessage() == "m"


def logged_with(error: BaseException) -> logging.LogRecord:
    """asyncpg's pool retry record for ``error``, through the filter."""
    try:
        raise error
    except BaseException:
        record = logging.LogRecord("asyncpg.pool", logging.WARNING, "", 0, "m", (), sys.exc_info())
    assert PostgresAwayInOneLine().filter(record)
    return record


@pytest.mark.parametrize(
    "error",
    [
        ssl.SSLCertVerificationError(1, "certificate verify failed"),
        FileNotFoundError(2, "No such file or directory", "/etc/jobrunner/root.crt"),
        PermissionError(13, "Permission denied", "/etc/jobrunner/client.key"),
    ],
    ids=["certificate", "missing-file", "unreadable-file"],
)
def test_a_configuration_error_is_not_postgres_away(error: OSError) -> None:
    """OSErrors of the installation's own making keep their traceback, unlabelled."""
    record = logged_with(error)
    assert record.exc_info is not None
    assert record.getMessage() == "m"


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    assert (
        logged_with(ConnectionResetError()).getMessage()
        == "m (Postgres away: ConnectionResetError)"
    )
    said = logged_with(ConnectionRefusedError(111, "refused")).getMessage()
    assert said == "m (Postgres away: ConnectionRefusedError: [Errno 111] refused)"


def test_a_statement_cancelled_is_not_postgres_away() -> None:
    """A QueryCanceledError is Postgres answering (a cancel, a statement_timeout): never a
    failed connect, so an asyncpg line with one keeps its traceback, as any unexpected error
    does. Before: shortened to "(Postgres away: QueryCanceledError ...)", as every
    OperatorInterventionError was."""
    record = logged_with(asyncpg.QueryCanceledError("canceling statement due to user request"))
    assert record.exc_info is not None
    assert record.getMessage() == "m"


def test_postgres_shutting_down_at_a_connect_is_postgres_away() -> None:
    said = logged_with(asyncpg.CannotConnectNowError("the database system is shutting down"))
    assert said.getMessage() == (
        "m (Postgres away: CannotConnectNowError: the database system is shutting down)"
    )
