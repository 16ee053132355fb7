"""Every error the API returns: an HTTP status, a machine-readable code and a human sentence.

Body: ``{"error": {"code": "UNKNOWN_JOB_TYPE", "message": "...", "fields": [...]}}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import asyncpg
import nats.errors
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import HTTPRouteHandler
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_503_SERVICE_UNAVAILABLE

from jobrunner.common import database, postgresconnect
from jobrunner.common.logging import LogThrottle
from jobrunner.services.api.readpool import (
    ReadModelsLost,
    ReadModelsNotRead,
    ReadModelsOfAnotherVersion,
    ReadModelsTimeout,
)

log = structlog.get_logger()


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        /,  # positional only: an extra field may be called "status"
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, **self.extra)

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as an ASGI answer carries them (lower-case names, latin-1 bytes)."""
        return [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (self.headers or {}).items()
        ]

    def response(self) -> Response[Any]:
        # JSON whatever the route's own type: a refusal answered before the route runs (the
        # read-model gate's) would take a stream's text/event-stream, which cannot encode the
        # body, and the 503 became a 500.
        return Response(
            self.body(),
            status_code=self.status,
            headers=self.headers,
            media_type=MediaType.JSON,
        )


def try_again_later(
    code: str, message: str, /, *, retry_after: int | None, **extra: Any
) -> ApiError:
    """503: the request cannot be served just now (NATS, Postgres or the read models away or
    behind, a conflict); Retry-After says when to ask again (None: no header)."""
    headers = None if retry_after is None else {"Retry-After": str(retry_after)}
    return ApiError(HTTP_503_SERVICE_UNAVAILABLE, code, message, headers=headers, **extra)


# An id echoed in a 404's sentence is cut here: an address may carry kilobytes of it, which the
# answer (and every log line quoting it) repeated whole. Real ids are 32 hex digits.
MAX_ECHOED_ID = 64


def echoed_id(given: str) -> str:
    return repr(given) if len(given) <= MAX_ECHOED_ID else f"{given[:MAX_ECHOED_ID]!r}…"


def job_not_found(job_id: str) -> ApiError:
    return ApiError(404, "JOB_NOT_FOUND", f"There is no job with id {echoed_id(job_id)}.")


def batch_not_found(batch_id: str) -> ApiError:
    return ApiError(404, "BATCH_NOT_FOUND", f"There is no batch with id {echoed_id(batch_id)}.")


def error_body(code: str, message: str, /, **extra: Any) -> dict[str, Any]:
    """The error's body: its code and sentence, then what else it names (``extra``), which
    cannot replace them (an extra called ``code`` or ``message`` is left out)."""
    error: dict[str, Any] = {"code": code, "message": message}
    error.update((name, value) for name, value in extra.items() if name not in error)
    return {"error": error}


def api_error_handler(_: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return exc.response()


# The codes of the framework's own refusals, each in README's table. No 429: none of the
# framework's rate limiting is configured, so its code here was never answered (jobrunner's own
# 429 is TOO_MANY_STREAMS, an ApiError). 401 and 403 are the codes jobrunner's access control
# answers itself, so a framework refusal of either reads the same.
_CODES_BY_STATUS = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "BODY_TOO_LARGE",
}


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code = _CODES_BY_STATUS.get(exc.status_code, "HTTP_ERROR")
    message = str(exc.detail)
    extra: dict[str, Any] = {}
    if isinstance(exc, ValidationException):
        code = "INVALID_REQUEST"
        if exc.extra:
            extra["fields"] = exc.extra
    elif isinstance(exc, NotFoundException):
        message = "There is nothing at this address."
    elif isinstance(exc, MethodNotAllowedException):
        message = method_not_allowed_message(request.method, (exc.headers or {}).get("allow"))
    elif isinstance(exc, RequestEntityTooLarge):
        # The framework says only "Request Entity Too Large": name the limit of this address
        # (1 MiB, a report's 256 KiB, ...), so that a client knows how much it may send.
        handler = request.scope.get("route_handler")
        limit = (
            handler.resolve_request_max_body_size()
            if isinstance(handler, HTTPRouteHandler)
            else None
        )
        if limit is not None:
            message = f"The request body may be at most {limit} bytes here; send less at once."
            extra["limit"] = limit
    return Response(
        error_body(code, message, **extra),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def method_not_allowed_message(method: str, allowed: str | None) -> str:
    """The framework says only "Method Not Allowed": name the methods the address takes (its
    Allow header). Every read route takes HEAD but the event streams (``reads``)."""
    if not allowed:
        return f"This address does not take {method}."
    return f"This address does not take {method}; it takes {allowed}."


def internal_error(path: str, exc: BaseException) -> ApiError:
    """500: an error the API has no answer for, logged with its traceback."""
    log.error("unhandled error", path=path, error=repr(exc), exc_info=exc)
    return ApiError(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
        "Something went wrong on our side; it has been logged.",
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return internal_error(request.url.path, exc).response()


# While NATS or Postgres is away every request that needs it is refused, each with a warning:
# one a request (45 in a 37 s Postgres restart with two pages open) said nothing the first did
# not. One line per interval per kind, with the count of those left out (``since_last``).
REFUSAL_LOG_INTERVAL = 10.0
NATS_SILENT_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)
POSTGRES_AWAY_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)
POSTGRES_TIMEOUT_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)


def _warn_throttled(throttle: LogThrottle, event: str, **fields: Any) -> None:
    left_out = throttle.admit()
    if left_out is None:
        return
    if left_out:
        fields["since_last"] = left_out
    log.warning(event, **fields)


def nats_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """NATS did not answer in time (busy, or away): the request may succeed a moment later.
    A message over the server's max_payload (refused before sending) never will: 413."""
    if isinstance(exc, nats.errors.MaxPayloadError):
        return Response(
            error_body(
                "MESSAGE_TOO_LARGE",
                "The request makes an event larger than the NATS server's max_payload; "
                "send less in one request.",
            ),
            status_code=413,
        )
    _warn_throttled(NATS_SILENT_LOG, "nats did not answer", path=request.url.path, error=repr(exc))
    return try_again_later(
        "EVENT_STORE_UNAVAILABLE",
        "The event store did not answer in time; try again shortly.",
        retry_after=1,
    ).response()


def postgres_away(path: str, exc: BaseException) -> ApiError:
    """Postgres is away (refused, reset, shutting down, starting up): the request may succeed
    once it is back."""
    _warn_throttled(POSTGRES_AWAY_LOG, "read models unavailable", path=path, error=repr(exc))
    return try_again_later(
        "READ_MODELS_UNAVAILABLE",
        "The read models (Postgres) cannot be reached just now; try again shortly.",
        retry_after=2,
    )


def other_version(path: str, exc: BaseException) -> ApiError:
    """A stream's opening read met read models the gate had let through a moment before and
    now knows are another version (a ``ReadModelsOfAnotherVersion``): the gate's own 503."""
    exc = cast(ReadModelsOfAnotherVersion, exc)  # READ_FAILURES looks it up by its class
    return try_again_later(
        exc.code, exc.sentence, retry_after=exc.retry_after_seconds, **exc.details
    )


def not_read(path: str, exc: BaseException) -> ApiError:
    """A stream's read not made (its opening read, or a job stream's row): the sentence says
    why, which is not always that Postgres cannot be reached (the version not known yet)."""
    # Its own message: the version merely not known yet is no "read models unavailable".
    _warn_throttled(POSTGRES_AWAY_LOG, "stream read not made", path=path, reason=str(exc))
    return try_again_later("READ_MODELS_UNAVAILABLE", str(exc), retry_after=2)


POSTGRES_REFUSED_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)


def warn_postgres_refused(where: str, exc: BaseException) -> None:
    """One line per interval while Postgres refuses this database_url, with what to do."""
    _warn_throttled(
        POSTGRES_REFUSED_LOG,
        "Postgres refuses the API's database_url",
        path=where,
        error=f"{type(exc).__name__}: {exc}",
        what_to_do=postgresconnect.WHAT_TO_DO_ON_REFUSAL,
    )


def postgres_refused(path: str, exc: BaseException) -> ApiError:
    """Postgres answered and refused the API's database_url (wrong user or password, no such
    database): no retry helps until the configuration (or the database) is put right."""
    warn_postgres_refused(path, exc)
    return try_again_later(
        "POSTGRES_REFUSED",
        "The read models' database (Postgres) refuses this API's connection "
        f"({type(exc).__name__}): check database_url (its user, password and database "
        "name) and that the database exists; tell the operator.",
        retry_after=30,
    )


# Seconds a client is asked to wait after READ_MODELS_TIMEOUT.
READ_TIMEOUT_RETRY_AFTER = 5


def read_models_timeout(exc: ReadModelsTimeout) -> ApiError:
    return try_again_later(
        "READ_MODELS_TIMEOUT",
        f"The read models (Postgres) did not answer within {exc.seconds:g} s; "
        "try again shortly, and tell the operator if it lasts.",
        retry_after=READ_TIMEOUT_RETRY_AFTER,
    )


def warn_read_models_timeout(path: str, exc: ReadModelsTimeout) -> None:
    """One line per interval for every read past its deadline (a frozen Postgres times out
    each request in turn), with the count of those left out."""
    _warn_throttled(
        POSTGRES_TIMEOUT_LOG, "read models did not answer in time", path=path, error=repr(exc)
    )


def postgres_timeout(path: str, exc: BaseException) -> ApiError:
    """A read of the read models passed ``api_read_timeout_seconds`` (a ``ReadModelsTimeout``,
    readpool.py): Postgres does not answer (frozen, overloaded); its connection has been
    terminated."""
    exc = cast(ReadModelsTimeout, exc)  # READ_FAILURES looks it up by its class
    warn_read_models_timeout(path, exc)
    return read_models_timeout(exc)


# Seconds a client is asked to wait after READ_CANCELLED or READ_STATEMENT_TIMEOUT: as long as
# after READ_MODELS_TIMEOUT, a read that took too long being the likelier cause of either.
READ_CANCELLED_RETRY_AFTER = READ_TIMEOUT_RETRY_AFTER
POSTGRES_CANCELLED_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)


def read_cancelled(exc: BaseException) -> ApiError:
    """A read whose statement Postgres cancelled (``QueryCanceledError``): Postgres answered,
    so not READ_MODELS_UNAVAILABLE. Its statement_timeout (the read took too long) or, any
    other cancel, an operator's (pg_cancel_backend): told by Postgres's English message, else
    by how long the read's statement ran against the session's timeout, which the read pool's
    connections record on the error (postgresconnect.statement_timed_out)."""
    if postgresconnect.statement_timed_out(exc):
        return try_again_later(
            "READ_STATEMENT_TIMEOUT",
            "The read took longer than the read models' database (Postgres) allows a statement "
            "(its statement_timeout) and was cancelled; try again shortly, and tell the "
            "operator if it lasts.",
            retry_after=READ_CANCELLED_RETRY_AFTER,
        )
    return try_again_later(
        "READ_CANCELLED",
        "The read was cancelled in the read models' database (Postgres), by an operator or "
        "a timeout of its own; try again shortly.",
        retry_after=READ_CANCELLED_RETRY_AFTER,
    )


def statement_cancelled(path: str, exc: BaseException) -> ApiError:
    warn_read_cancelled(path, exc)
    return read_cancelled(exc)


def warn_read_cancelled(path: str, exc: BaseException) -> None:
    """The throttled log line of a read whose statement Postgres cancelled."""
    # How long the statement ran and under which timeout, when the message did not say which
    # cancel it was: what the answer was told by.
    run = postgresconnect.run_of(exc)
    told_by = (
        {}
        if run is None
        else {
            "ran_seconds": round(run.seconds, 3),
            "statement_timeout_seconds": run.statement_timeout,
        }
    )
    _warn_throttled(
        POSTGRES_CANCELLED_LOG,
        "a read's statement cancelled by Postgres",
        path=path,
        error=repr(exc),
        **told_by,
    )


# Seconds a client is asked to wait after READ_CONFLICT: the other transaction has likely
# finished by then.
READ_CONFLICT_RETRY_AFTER = 1
# And after READ_MODELS_OVERLOADED: memory, disk or connections are not freed in an instant.
READ_OVERLOADED_RETRY_AFTER = 5
POSTGRES_TRANSIENT_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)


def transient_answer(cause: str | None) -> ApiError | None:
    """The answer to a Postgres error that may pass, by its ``cause``
    (postgresconnect.transient_cause, by its SQLSTATE, a code asyncpg does not know included),
    or None: not one, or an operator's intervention."""
    if cause == postgresconnect.LOCK_TIMEOUT:
        return try_again_later(
            "READ_STATEMENT_TIMEOUT",
            "The read waited for a lock longer than the read models' database (Postgres) "
            "allows (its lock_timeout) and was cancelled; try again shortly, and tell the "
            "operator if it lasts.",
            retry_after=READ_CANCELLED_RETRY_AFTER,
        )
    if cause == postgresconnect.TRANSACTION_CONFLICT:
        return try_again_later(
            "READ_CONFLICT",
            "The read models' database (Postgres) ended the read in a conflict with another "
            "transaction (a deadlock or serialization failure); try again.",
            retry_after=READ_CONFLICT_RETRY_AFTER,
        )
    if cause == postgresconnect.INSUFFICIENT_RESOURCES:
        return try_again_later(
            "READ_MODELS_OVERLOADED",
            "The read models' database (Postgres) lacks the resources for the read just now "
            "(connections, memory or disk); try again shortly, and tell the operator if it "
            "lasts.",
            retry_after=READ_OVERLOADED_RETRY_AFTER,
        )
    return None


def transient_postgres_error(path: str, exc: BaseException) -> ApiError | None:
    """A Postgres error that may pass (by its SQLSTATE class): a 503 naming it, never a 500.
    An operator's intervention (class 57) that neither ends the session nor cancels the
    statement is told as Postgres away; an unknown SQLSTATE of no such class is None (a 500,
    ``read_failure``)."""
    cause = postgresconnect.transient_cause(exc)
    if cause is None:
        return None
    answer = transient_answer(cause)
    if answer is None:  # an operator's intervention
        return postgres_away(path, exc)
    _warn_throttled(
        POSTGRES_TRANSIENT_LOG,
        "a read failed in Postgres for now",
        path=path,
        error=repr(exc),
        sqlstate=getattr(exc, "sqlstate", None),
    )
    return answer


# What Postgres being away looks like to a read: a new connection refused or reset (the read
# pool's connect turns only its own socket errors into PostgresUnreachable: another OSError or
# TimeoutError of the API, a NATS KV lag, is not Postgres's), one it closed (a shutdown, a
# restart), one it refuses while starting. A query Postgres does not answer (frozen) is not
# this but ReadModelsTimeout, past api_read_timeout_seconds (readpool.py).
POSTGRES_AWAY: tuple[type[Exception], ...] = (
    database.PostgresUnreachable,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    # Postgres ended the read's session (shutting down, crashed, starting up, its database
    # dropped, an idle session's timeout); not a statement it cancelled, which is
    # read_cancelled_handler's.
    *postgresconnect.SESSION_ENDED_ERRORS,
    ReadModelsLost,  # a read's connection died, told by asyncpg as a client-side error
)

# The answer to each failure a read of the read models meets, by the failure's class, given the
# request's path (for its throttled log line). Looked up as Litestar looks up its exception
# handlers, by the nearest class of the error's MRO (``read_failure``): the subclasses (a
# session ended, a statement cancelled) keep their own answers. Litestar's handlers
# (EXCEPTION_HANDLERS) and the fast path of the most frequent reads (jobs_fastpath.py) answer
# through this one table, so a client is told the same whichever path served it, and the fast
# path need not hand a failed read over to Litestar, which would run it again.
ReadFailureAnswer = Callable[[str, BaseException], ApiError | None]
READ_FAILURES: dict[type[BaseException], ReadFailureAnswer] = {
    **dict.fromkeys(POSTGRES_AWAY, postgres_away),
    # A stream's read not made: Postgres away just now, or the version not known yet.
    ReadModelsNotRead: not_read,
    ReadModelsTimeout: postgres_timeout,
    **dict.fromkeys(postgresconnect.STATEMENT_CANCELLED_ERRORS, statement_cancelled),
    **dict.fromkeys(postgresconnect.TRANSIENT_STATEMENT_ERRORS, transient_postgres_error),
    asyncpg.exceptions.UnknownPostgresError: transient_postgres_error,
    ReadModelsOfAnotherVersion: other_version,
    **dict.fromkeys(postgresconnect.REFUSING_CONNECT_ERRORS, postgres_refused),
}


def read_failure(path: str, exc: BaseException) -> ApiError | None:
    """The answer (its log line written) to ``exc``, a read's failure in or on the way to
    Postgres, or None: not one (``READ_FAILURES``), or one no retry mends (a SQLSTATE of no
    transient class): the API's 500 (``internal_error``)."""
    for kind in type(exc).__mro__:
        answer = READ_FAILURES.get(kind)
        if answer is not None:
            return answer(path, exc)
    return None


def read_failure_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    answer = read_failure(request.url.path, exc)
    return (answer or internal_error(request.url.path, exc)).response()


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: api_error_handler,
    HTTPException: http_error_handler,
    nats.errors.Error: nats_error_handler,
    **dict.fromkeys(READ_FAILURES, read_failure_handler),
    Exception: internal_error_handler,
}
