"""What a failed connect to Postgres means: an outage that may pass (waited out, retried) or a
refusal that will not (a wrong password or user, no such database: the configuration is wrong,
and waiting would hide it). Shared by the projector's start (services/projector/outage.py) and
the API's (services/api/readmodelgate.py), which end their start with a refusal; and a
command's check at its start (``check_answers``: `jobrunner replay`), which ends at either, as
it does at a later connect of its own that fails (``unusable``: Postgres frozen or stopped after
the check)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import asyncpg
import msgspec

from jobrunner.common import exitcodes
from jobrunner.common.database import PostgresUnreachable
from jobrunner.common.refusal import REFUSED_EXIT

# Postgres going away or not ready: shutting down (pg_terminate_backend, a fast shutdown),
# crashed, starting up. The rest of OperatorInterventionError is not: a statement cancelled
# (pg_cancel_backend, a statement_timeout), an idle session's timeout, its database dropped.
GOING_AWAY_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)

# Postgres ended this session (a FATAL error: the connection is gone) but is not, or not
# necessarily, going away: besides GOING_AWAY_ERRORS, the session's database dropped, or its
# idle_session_timeout passed. A new connection may serve; this one never will again.
SESSION_ENDED_ERRORS: tuple[type[Exception], ...] = (
    *GOING_AWAY_ERRORS,
    asyncpg.exceptions.DatabaseDroppedError,
    asyncpg.exceptions.IdleSessionTimeoutError,
)

# A statement Postgres cancelled and answered so (SQLSTATE 57014): an operator's
# pg_cancel_backend, or the session's statement_timeout. Postgres is there, and the session
# lives on: not "Postgres away", and the connection is kept.
STATEMENT_CANCELLED_ERRORS: tuple[type[Exception], ...] = (asyncpg.QueryCanceledError,)

# What Postgres says, in English, of a statement its statement_timeout cancelled and of one an
# operator cancelled (pg_cancel_backend, a database tool's "cancel"). Nothing else tells them
# apart: both are raised in ProcessInterrupts (postgres.c) with the same SQLSTATE (57014) and
# no detail or hint (a PL/pgSQL caller's CONTEXT is the same for both; the source line differs,
# but by version and build). The message is translated to the session's lc_messages (a German
# server says "storniere Anfrage wegen Zeitüberschreitung der Anfrage"), so the message decides
# only where it is one of these.
STATEMENT_TIMEOUT_MESSAGE = "canceling statement due to statement timeout"
USER_REQUEST_MESSAGE = "canceling statement due to user request"


class StatementRun(msgspec.Struct, frozen=True):
    """What the caller knows of a statement Postgres cancelled: how long it ran by the caller's
    own clock (from before it was sent until its error was read) and the session's
    statement_timeout (seconds; 0: none; None: not known, as when asking failed)."""

    seconds: float
    statement_timeout: float | None

    def reached_timeout(self) -> bool:
        """Whether the statement ran as long as its session's statement_timeout allows, less
        ``CLOCK_RATE_MARGIN`` and ``CLOCK_MARGIN_SECONDS``. Postgres starts the timer once the
        statement has reached it and fires it no earlier than the timeout, but by its own wall
        clock (timeout.c), so a statement its timeout cancelled has run about that long by the
        caller's monotonic clock, the margin's worth short at worst; a cancel read sooner is an
        operator's."""
        timeout = self.statement_timeout
        if timeout is None or timeout <= 0:
            return False
        return self.seconds >= timeout * (1 - CLOCK_RATE_MARGIN) - CLOCK_MARGIN_SECONDS


# What Postgres's clock may gain on the API's over a statement: Postgres times the statement by
# its wall clock, which NTP slews by up to 500 ppm (a 300 s timeout fires 150 ms early by the
# API's monotonic clock, often on another host), doubled; and a step's rounding. An operator's
# cancel that close to the timeout cannot be told from it anyway.
CLOCK_RATE_MARGIN = 1e-3
CLOCK_MARGIN_SECONDS = 0.002


# Where a connection that times its statements (timedconnection.py) leaves the StatementRun on
# the QueryCanceledError it raises: the API's error handlers get the exception alone.
_RUN_ATTRIBUTE = "_statement_run_of_jobrunner"  # a "jobrunner_" name reads as a metric


def record_run(exc: BaseException, run: StatementRun) -> None:
    setattr(exc, _RUN_ATTRIBUTE, run)


def run_of(exc: BaseException) -> StatementRun | None:
    run = getattr(exc, _RUN_ATTRIBUTE, None)
    return run if isinstance(run, StatementRun) else None


def said_timed_out(exc: BaseException) -> bool | None:
    """What Postgres's own (English) message says of a cancelled statement ``exc``: True, its
    statement_timeout; False, an operator's cancel; None, it says neither (another language's
    message, or not a QueryCanceledError)."""
    if not isinstance(exc, asyncpg.QueryCanceledError) or not exc.args:
        return None
    # Postgres's message alone: str() adds its DETAIL and HINT.
    message = str(exc.args[0])
    if message.startswith(STATEMENT_TIMEOUT_MESSAGE):
        return True
    if message.startswith(USER_REQUEST_MESSAGE):
        return False
    return None


def statement_timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a statement cancelled at its statement_timeout (not an operator's), on
    a server of any language. Postgres's English message decides when it says one; otherwise
    (lc_messages another language) the statement's run recorded on ``exc`` does: it ran at
    least its session's statement_timeout. Not known how long it ran, or under which timeout:
    an operator's cancel, the answer that blames no setting (as before session 37)."""
    said = said_timed_out(exc)
    if said is not None:
        return said
    run = run_of(exc)
    return isinstance(exc, asyncpg.QueryCanceledError) and run is not None and run.reached_timeout()


# Errors of a statement that Postgres answered and that the same statement may not meet a
# moment later, told by SQLSTATE class rather than by asyncpg's class: class 57 (operator
# intervention; its subclasses that end the session are SESSION_ENDED_ERRORS, a cancel is
# STATEMENT_CANCELLED_ERRORS), 40 (a serialization failure, a deadlock), 53 (insufficient
# resources: out of memory, disk full, too many connections) and 55P03 (lock_not_available: an
# operator's lock_timeout). A SQLSTATE asyncpg does not know (UnknownPostgresError) is judged by
# its class as well (``transient_cause``); these are the classes an ``except`` can name.
TRANSIENT_STATEMENT_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.LockNotAvailableError,
)

# What each transient SQLSTATE class (or SQLSTATE) means, as transient_cause answers it.
OPERATOR_INTERVENTION = "operator_intervention"
TRANSACTION_CONFLICT = "transaction_conflict"
INSUFFICIENT_RESOURCES = "insufficient_resources"
LOCK_TIMEOUT = "lock_timeout"
_TRANSIENT_SQLSTATES = (
    ("55P03", LOCK_TIMEOUT),
    ("57", OPERATOR_INTERVENTION),
    ("40", TRANSACTION_CONFLICT),
    ("53", INSUFFICIENT_RESOURCES),
)


def transient_cause(exc: BaseException) -> str | None:
    """Which transient Postgres error ``exc`` is, by its SQLSTATE (one of the causes above), or
    None: not a Postgres error, or one that trying again does not mend."""
    sqlstate = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    if not isinstance(sqlstate, str):
        return None
    for prefix, cause in _TRANSIENT_SQLSTATES:
        if sqlstate.startswith(prefix):
            return cause
    return None


# A connect that may succeed later: refused, reset, timed out, Postgres starting up or shutting
# down (or the new backend terminated as it started), its connections all taken. A refusal
# (below) is raised. Not the rest of OperatorInterventionError: a connect runs no statement to
# cancel and has no idle session to time out.
PASSING_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # TimeoutError among them
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
    *GOING_AWAY_ERRORS,
)

# Postgres answered and refused this database_url: its user or password (InvalidPasswordError
# among them), or its database, which does not exist.
REFUSING_CONNECT_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)

WHAT_TO_DO_ON_REFUSAL = (
    "check database_url (its user, password and database name) and that the database exists"
)


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is Postgres refusing this database_url (no waiting makes it pass)."""
    return isinstance(exc, REFUSING_CONNECT_ERRORS)


# A command's Postgres does not answer (stopped, frozen, unreachable).
UNAVAILABLE_EXIT = exitcodes.UNAVAILABLE
# A command's connect (its check at the start, and each it opens later: the rebuild's, the
# replay's): past it, a Postgres that accepts the connection and answers nothing (frozen) is
# given up, as asyncpg would only after 60 s. A working Postgres answers a connect in
# milliseconds, a loaded one in a second or two.
CHECK_CONNECT_SECONDS = 10.0
WHAT_TO_DO_WHEN_UNAVAILABLE = "start Postgres or check database_url"


class PostgresUnusable(Exception):
    """A command's Postgres did not answer, or refused its database_url: its sentence starts
    with the code (``POSTGRES_UNAVAILABLE``, ``POSTGRES_REFUSED``), and ``exit_code`` is the
    command's."""

    def __init__(self, code: str, sentence: str, exit_code: int) -> None:
        super().__init__(f"{code}: {sentence}")
        self.code = code
        self.exit_code = exit_code


# The failed connects of a command's own work (past its check) that ``unusable`` says as the
# check does. Its connects raise ``PostgresUnreachable`` for a socket's error or their timeout
# (``database.connect_or_unreachable``), not a bare ``OSError``: an ``OSError`` of anything
# else (NATS, a file) is not said to be Postgres'. Caught around the whole work, not only its
# connects: an error a statement meets is said as "does not answer" only when it means that.
COMMAND_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    PostgresUnreachable,
    asyncpg.TooManyConnectionsError,
    asyncpg.PostgresConnectionError,
    *GOING_AWAY_ERRORS,
    *REFUSING_CONNECT_ERRORS,
)


async def check_answers(database_url: str, within: float = CHECK_CONNECT_SECONDS) -> None:
    """Connect once (within ``within`` seconds) and close: ``PostgresUnusable`` when Postgres
    does not answer or refuses, so that a command says so in one sentence before it starts."""
    try:
        conn = await asyncpg.connect(database_url, timeout=within)
    except (*REFUSING_CONNECT_ERRORS, *PASSING_CONNECT_ERRORS) as exc:
        raise unusable(exc, database_url, within) from None
    conn.terminate()  # nothing to close gracefully: no round trip to wait on


def unusable(
    exc: BaseException, database_url: str, within: float = CHECK_CONNECT_SECONDS
) -> PostgresUnusable:
    """The sentence and exit code of a command whose connect failed with ``exc`` (one of
    ``PASSING_CONNECT_ERRORS``, ``REFUSING_CONNECT_ERRORS`` or ``COMMAND_CONNECT_ERRORS``)."""
    where = server_of(database_url)
    if refused(exc):
        return PostgresUnusable(
            "POSTGRES_REFUSED",
            f"Postgres at {where} refused database_url ({_told(exc)}): {WHAT_TO_DO_ON_REFUSAL}",
            REFUSED_EXIT,
        )
    return PostgresUnusable(
        "POSTGRES_UNAVAILABLE",
        f"Postgres at {where} does not answer ({_told(exc)}, a connect's bound {within:g} s): "
        f"{WHAT_TO_DO_WHEN_UNAVAILABLE}",
        UNAVAILABLE_EXIT,
    )


# What a command's statement meets when Postgres goes away under it: its backend terminated
# (``pg_terminate_backend``, a shutdown: AdminShutdownError), the server crashed or starting
# again, its connection lost (ConnectionDoesNotExistError among PostgresConnectionError) or
# reset. Not the rest of OperatorInterventionError: a statement cancelled (a statement_timeout,
# pg_cancel_backend), an idle session's timeout or its database dropped fail the same way when
# run again, so "run it again once Postgres answers" would be wrong.
WENT_AWAY_ERRORS: tuple[type[BaseException], ...] = (
    *GOING_AWAY_ERRORS,
    asyncpg.PostgresConnectionError,
    ConnectionResetError,
)


def went_away_error(exc: BaseException) -> BaseException | None:
    """The error of ``WENT_AWAY_ERRORS`` that ``exc`` is, or was raised from or while handling
    (``__cause__``, ``__context__``), if any: asyncpg raises a transaction's exit on a lost
    connection as ``InterfaceError`` ("the underlying connection is closed"), over the
    statement's own ``ConnectionDoesNotExistError``. A context suppressed (``raise ... from
    None``) is not followed: its raiser said it does not explain the error."""
    return _in_chain(exc, WENT_AWAY_ERRORS)


def cancelled_error(exc: BaseException) -> BaseException | None:
    """The ``QueryCanceledError`` that ``exc`` is, or was raised from or while handling, as
    ``went_away_error`` finds its errors."""
    return _in_chain(exc, STATEMENT_CANCELLED_ERRORS)


def _in_chain(exc: BaseException, errors: tuple[type[BaseException], ...]) -> BaseException | None:
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        if isinstance(found, errors):
            return found
        seen.add(id(found))
        if found.__cause__ is not None:
            found = found.__cause__
        elif found.__suppress_context__:
            found = None
        else:
            found = found.__context__
    return None


NOTHING_SWAPPED = "nothing was swapped; run it again once Postgres answers"


def went_away(
    cause: str, database_url: str, during: str, consequence: str = NOTHING_SWAPPED
) -> PostgresUnusable:
    """The sentence and exit code (69) of a command whose Postgres stopped answering, or ended
    its connections, while its work ran (``cause``: why, e.g. the probe unanswered;
    ``consequence``: what it left, and what to do)."""
    return PostgresUnusable(
        "POSTGRES_UNAVAILABLE",
        f"Postgres at {server_of(database_url)} went away during {during} ({cause}): {consequence}",
        UNAVAILABLE_EXIT,
    )


# A statement of a command's work cancelled in Postgres: its sessions set no
# statement_timeout (0 at connect, postgreswatch.WORK_SESSION_SETTINGS, which wins over a
# database's or a role's), so an operator did it (pg_cancel_backend, a database tool's
# "cancel"), whatever the message says and in whichever language.
# Not EX_TEMPFAIL (75): a script that runs the command again on that must not overrule them.
STATEMENT_CANCELLED_EXIT = 5


class StatementCancelled(Exception):
    """A command's statement cancelled in Postgres: its sentence starts with the code
    (``STATEMENT_CANCELLED``), and ``exit_code`` is the command's."""

    code = "STATEMENT_CANCELLED"
    exit_code = STATEMENT_CANCELLED_EXIT


def statement_cancelled(
    exc: BaseException, database_url: str, during: str, consequence: str
) -> StatementCancelled:
    """The sentence of a command whose statement was cancelled (``exc``, a
    ``QueryCanceledError``) during its work (``during``), and what it left (``consequence``)."""
    return StatementCancelled(
        f"{StatementCancelled.code}: Postgres at {server_of(database_url)} cancelled a "
        f"statement of {during} ({_told(exc)}; an operator's pg_cancel_backend): {consequence}"
    )


def _told(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def server_of(database_url: str) -> str:
    """``host:port/database`` of a Postgres URL, for logs: never its user or password. A host
    given as ``?host=`` (a Unix socket's directory, ``?host=/run/postgresql``) is the one
    connected to, and named; so is ``?port=``."""
    url = urlsplit(database_url)
    query = parse_qs(url.query)
    try:
        port: int | str = query["port"][0] if "port" in query else url.port or 5432
    except ValueError:
        port = 5432
    host = query["host"][0] if "host" in query else url.hostname or "localhost"
    return f"{host}:{port}{url.path}"
