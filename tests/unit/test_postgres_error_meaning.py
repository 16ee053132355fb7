"""What `jobrunner replay` makes of asyncpg's errors: which mean Postgres went away
(``went_away_error``, behind POSTGRES_UNAVAILABLE "went away ... run it again") and which a
failed connect
(``COMMAND_CONNECT_ERRORS``, behind "does not answer ... start Postgres"). asyncpg's own
exception types, as the server's messages make them."""

from __future__ import annotations

import asyncpg
import pytest

from jobrunner.common import postgresconnect

TERMINATED = "terminating connection due to administrator command"
CANCELLED = "canceling statement due to user request"


def _raised(make: object) -> BaseException:
    """The exception ``make()`` raises."""
    try:
        make()  # type: ignore[operator]
    except BaseException as exc:
        return exc
    raise AssertionError("nothing raised")


def _over_a_shutdown(how: str) -> BaseException:
    """A QueryCanceledError raised while handling an AdminShutdownError: ``from None``, ``from``
    it, or plainly (its context)."""

    def raise_it() -> None:
        try:
            raise asyncpg.exceptions.AdminShutdownError(TERMINATED)
        except asyncpg.exceptions.AdminShutdownError as shutdown:
            if how == "from None":
                raise asyncpg.QueryCanceledError(CANCELLED) from None
            if how == "from it":
                raise asyncpg.QueryCanceledError(CANCELLED) from shutdown
            raise asyncpg.QueryCanceledError(CANCELLED)  # noqa: B904 - the context is the test

    return _raised(raise_it)


def test_an_error_raised_from_none_over_a_terminated_backend_is_not_postgres_gone() -> None:
    """``raise ... from None`` says the error below does not explain it: not followed (it was,
    through ``__context__``)."""
    assert postgresconnect.went_away_error(_over_a_shutdown("from None")) is None


def test_an_error_raised_from_a_terminated_backend_is_postgres_gone() -> None:
    failure = _over_a_shutdown("from it")
    went = postgresconnect.went_away_error(failure)
    assert isinstance(went, asyncpg.exceptions.AdminShutdownError)
    assert went is failure.__cause__


def test_an_error_raised_while_handling_a_terminated_backend_is_postgres_gone() -> None:
    """asyncpg raises a transaction's exit on a lost connection over the statement's error,
    as its context."""
    failure = _over_a_shutdown("plainly")
    went = postgresconnect.went_away_error(failure)
    assert isinstance(went, asyncpg.exceptions.AdminShutdownError)
    assert went is failure.__context__


# Postgres shutting down or starting up: what a connect meets and may wait out.
SHUTTING_DOWN_OR_STARTING = [
    asyncpg.exceptions.AdminShutdownError(TERMINATED),
    asyncpg.exceptions.CrashShutdownError("terminating connection because of crash"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
]
# The rest of Postgres' "operator intervention": a statement cancelled, a session ended.
CANCELLED_OR_ENDED = [
    asyncpg.QueryCanceledError(CANCELLED),
    asyncpg.exceptions.DatabaseDroppedError("terminating connection due to dropped database"),
    asyncpg.exceptions.IdleSessionTimeoutError("terminating connection due to idle-session"),
]


def _name(error: BaseException) -> str:
    return type(error).__name__


@pytest.mark.parametrize("error", SHUTTING_DOWN_OR_STARTING, ids=_name)
def test_postgres_shutting_down_or_starting_is_a_failed_connect(error: BaseException) -> None:
    assert isinstance(error, postgresconnect.COMMAND_CONNECT_ERRORS)


@pytest.mark.parametrize("error", CANCELLED_OR_ENDED, ids=_name)
def test_a_cancelled_statement_is_not_a_failed_connect(error: BaseException) -> None:
    """A statement cancelled (``pg_cancel_backend``) and the rest of Postgres' "operator
    intervention" errors are not Postgres not answering: they were said as "does not answer
    ... a connect's bound", as every OperatorInterventionError was."""
    assert not isinstance(error, postgresconnect.COMMAND_CONNECT_ERRORS)


@pytest.mark.parametrize("error", CANCELLED_OR_ENDED, ids=_name)
def test_a_connect_waits_out_no_cancel_dropped_database_or_idle_timeout(
    error: BaseException,
) -> None:
    """The projector's and the API's start wait out a connect that "may pass"
    (``PASSING_CONNECT_ERRORS``): a shutdown or a start under way, not these, which a connect
    never meets (no statement of its own to cancel, no idle session) and which before counted as
    every OperatorInterventionError did."""
    assert not isinstance(error, postgresconnect.PASSING_CONNECT_ERRORS)


@pytest.mark.parametrize("error", SHUTTING_DOWN_OR_STARTING, ids=_name)
def test_a_connect_waits_out_postgres_shutting_down_or_starting(error: BaseException) -> None:
    assert isinstance(error, postgresconnect.PASSING_CONNECT_ERRORS)


@pytest.mark.parametrize(
    ("message", "timed_out"),
    [
        ("canceling statement due to statement timeout", True),
        (CANCELLED, False),
    ],
)
def test_a_statement_timeout_is_told_from_an_operators_cancel(
    message: str, timed_out: bool
) -> None:
    assert postgresconnect.statement_timed_out(asyncpg.QueryCanceledError(message)) is timed_out


# A server whose lc_messages is German says either cancel in German (postgres-15.mo).
GERMAN_TIMEOUT = "storniere Anfrage wegen Zeitüberschreitung der Anfrage"
GERMAN_CANCEL = "storniere Anfrage wegen Benutzeraufforderung"
# The session's statement_timeout in these runs, the least run told as the timeout under it
# (postgresconnect.StatementRun.reached_timeout: the two clocks' margin taken off), and a
# millisecond.
TIMEOUT = 0.3
BOUND = TIMEOUT * (1 - 1e-3) - 0.002  # 0.2977
MS = 0.001


def _run(seconds: float, timeout: float | None = TIMEOUT) -> postgresconnect.StatementRun:
    return postgresconnect.StatementRun(seconds=seconds, statement_timeout=timeout)


@pytest.mark.parametrize(
    ("message", "run", "timed_out"),
    [
        # In another language, how long the statement ran against its session's timeout tells.
        (GERMAN_CANCEL, _run(BOUND - MS), False),
        (GERMAN_TIMEOUT, _run(BOUND - MS), False),
        (GERMAN_TIMEOUT, _run(BOUND + MS), True),
        (GERMAN_TIMEOUT, _run(TIMEOUT), True),
        # No timeout in the session: an operator's, however long it ran; not known: the same.
        (GERMAN_TIMEOUT, _run(3600.0, timeout=0.0), False),
        (GERMAN_TIMEOUT, _run(3600.0, timeout=None), False),
        (GERMAN_TIMEOUT, None, False),
        # Postgres's English message decides whatever the run says.
        ("canceling statement due to statement timeout", _run(TIMEOUT - MS), True),
        (CANCELLED, _run(TIMEOUT + MS), False),
    ],
    ids=[
        "german-cancel-just-shorter",
        "german-just-shorter",
        "german-just-longer",
        "german-at-the-timeout",
        "german-no-timeout",
        "german-timeout-unknown",
        "german-run-unknown",
        "english-timeout-shorter",
        "english-cancel-longer",
    ],
)
def test_a_statement_timeout_is_told_from_an_operators_cancel_in_any_language(
    message: str, run: postgresconnect.StatementRun | None, timed_out: bool
) -> None:
    """A statement cancelled in Postgres is its statement_timeout's when Postgres says so in
    English, or when it ran at least its session's timeout less the clocks' margin (0.1 % and
    2 ms: Postgres's wall clock against the API's monotonic one): a millisecond shorter than
    that is an operator's cancel; a millisecond longer, the timeout's. The run is the one
    recorded on the error by the connection that ran the statement (timedconnection.py)."""
    error = asyncpg.QueryCanceledError(message)
    if run is not None:
        postgresconnect.record_run(error, run)
    assert postgresconnect.statement_timed_out(error) is timed_out
