"""API errors: what a client gets when a part behind the API fails."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec
import nats.errors
import pytest
from litestar import Request, Response, get
from litestar.exceptions import HTTPException

from jobrunner.common import database, postgresconnect
from jobrunner.services.api import errors
from jobrunner.services.api.errors import EXCEPTION_HANDLERS, ApiError, try_again_later
from jobrunner.services.api.readpool import (
    ReadModelsLost,
    ReadModelsNotRead,
    ReadModelsOfAnotherVersion,
    ReadModelsTimeout,
)
from tests.tools.one_route_api import answer_to_get


def request() -> Request:  # type: ignore[type-arg]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/jobs/j1/stream",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
    }
    return Request(scope)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "error",
    [nats.errors.TimeoutError(), nats.errors.NoServersError(), nats.errors.ConnectionClosedError()],
)
def test_nats_not_answering_is_a_503_to_retry_not_a_500(error: Exception) -> None:
    """NATS busy or away: the client is told to try again shortly, with a code to act on."""
    handler = next(h for kind, h in EXCEPTION_HANDLERS.items() if isinstance(error, kind))
    response = handler(request(), error)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    body = msgspec.json.decode(msgspec.json.encode(response.content))
    assert body["error"]["code"] == "EVENT_STORE_UNAVAILABLE"


async def test_try_again_later_is_a_503_with_its_code_sentence_and_retry_after() -> None:
    """A client told to try again later gets 503, the code to act on, the sentence, what else
    the refusal names, and how many seconds to wait."""

    @get("/refused")
    async def refused() -> str:
        raise try_again_later(
            "EVENT_STORE_UNAVAILABLE", "Send it again shortly.", retry_after=3, job_id="j1"
        )

    response = await answer_to_get(refused)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "3"
    assert response.headers["content-type"] == "application/json"
    assert msgspec.json.decode(response.content) == {
        "error": {
            "code": "EVENT_STORE_UNAVAILABLE",
            "message": "Send it again shortly.",
            "job_id": "j1",
        }
    }


async def test_try_again_later_answered_before_a_stream_route_runs_is_json() -> None:
    """A refusal answered before the route runs (the read-model gate's) on a live stream's
    address is the same JSON 503, not a 500 from a body text/event-stream cannot carry."""

    async def refuse(_: Request) -> Response:  # type: ignore[type-arg]
        return try_again_later("READ_MODELS_NEWER", "Upgrade this API.", retry_after=5).response()

    @get("/stream", media_type="text/event-stream", before_request=refuse)
    async def stream() -> str:
        return "data: never\n\n"

    response = await answer_to_get(stream)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert msgspec.json.decode(response.content)["error"]["code"] == "READ_MODELS_NEWER"


async def test_try_again_later_without_retry_after_sends_no_header() -> None:
    """A refusal that may be sent again at once names no wait (IDEMPOTENCY_UNAVAILABLE)."""

    @get("/refused")
    async def refused() -> str:
        raise try_again_later(
            "IDEMPOTENCY_UNAVAILABLE", "Send the request again.", retry_after=None
        )

    response = await answer_to_get(refused)
    assert response.status_code == 503, response.text
    assert "retry-after" not in response.headers
    assert msgspec.json.decode(response.content)["error"]["code"] == "IDEMPOTENCY_UNAVAILABLE"


_POSTGRES_AWAY = "The read models (Postgres) cannot be reached just now; try again shortly."


# What a client is answered for each failure a route may raise, copied from the answers of main
# at 572d3c6 (before try_again_later): (status, Retry-After, code, message, other fields). The
# literal values, not the modules' constants, so that a changed constant shows here too.
def _unknown_sqlstate(sqlstate: str) -> asyncpg.PostgresError:
    """An error as asyncpg raises it for a SQLSTATE it has no class for (UnknownPostgresError)."""
    return asyncpg.PostgresError.new({"C": sqlstate, "M": "x", "S": "ERROR"})


_CONFLICT = (
    "The read models' database (Postgres) ended the read in a conflict with another "
    "transaction (a deadlock or serialization failure); try again."
)
_SHORT = (
    "The read models' database (Postgres) lacks the resources for the read just now "
    "(connections, memory or disk); try again shortly, and tell the operator if it lasts."
)
_LOCK_TIMEOUT = (
    "The read waited for a lock longer than the read models' database (Postgres) allows (its "
    "lock_timeout) and was cancelled; try again shortly, and tell the operator if it lasts."
)
_OURS = "Something went wrong on our side; it has been logged."
_TOO_LONG = (
    "The read took longer than the read models' database (Postgres) allows a statement (its "
    "statement_timeout) and was cancelled; try again shortly, and tell the operator if it lasts."
)
_CANCELLED = (
    "The read was cancelled in the read models' database (Postgres), by an operator or a "
    "timeout of its own; try again shortly."
)


def _cancelled_in_german(ran: float) -> asyncpg.QueryCanceledError:
    """A read's statement cancelled on a server speaking German, after ``ran`` seconds under a
    statement_timeout of 300 ms, as the read pool's connection records it."""
    error = asyncpg.QueryCanceledError("storniere Anfrage wegen Zeitüberschreitung der Anfrage")
    postgresconnect.record_run(error, postgresconnect.StatementRun(ran, statement_timeout=0.3))
    return error


ANSWERS: list[tuple[Exception, tuple[int, str | None, str, str, dict[str, Any]]]] = [
    (
        nats.errors.TimeoutError(),
        (
            503,
            "1",
            "EVENT_STORE_UNAVAILABLE",
            "The event store did not answer in time; try again shortly.",
            {},
        ),
    ),
    (
        nats.errors.NoServersError(),
        (
            503,
            "1",
            "EVENT_STORE_UNAVAILABLE",
            "The event store did not answer in time; try again shortly.",
            {},
        ),
    ),
    (
        nats.errors.MaxPayloadError(),
        (
            413,
            None,
            "MESSAGE_TOO_LARGE",
            "The request makes an event larger than the NATS server's max_payload; send less "
            "in one request.",
            {},
        ),
    ),
    (database.PostgresUnreachable("x"), (503, "2", "READ_MODELS_UNAVAILABLE", _POSTGRES_AWAY, {})),
    (ReadModelsLost("x"), (503, "2", "READ_MODELS_UNAVAILABLE", _POSTGRES_AWAY, {})),
    (ReadModelsNotRead("why"), (503, "2", "READ_MODELS_UNAVAILABLE", "why", {})),
    (
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        (503, "5", "READ_STATEMENT_TIMEOUT", _TOO_LONG, {}),
    ),
    (
        asyncpg.QueryCanceledError("canceling statement due to user request"),
        (503, "5", "READ_CANCELLED", _CANCELLED, {}),
    ),
    # In German: a millisecond either side of the timeout's bound less the clocks' margin
    # (0.3 s * 0.999 - 2 ms = 0.2977 s): short of it an operator's, past it the timeout's.
    (_cancelled_in_german(0.2967), (503, "5", "READ_CANCELLED", _CANCELLED, {})),
    (_cancelled_in_german(0.2987), (503, "5", "READ_STATEMENT_TIMEOUT", _TOO_LONG, {})),
    (asyncpg.AdminShutdownError("x"), (503, "2", "READ_MODELS_UNAVAILABLE", _POSTGRES_AWAY, {})),
    (
        asyncpg.exceptions.IdleSessionTimeoutError("x"),
        (503, "2", "READ_MODELS_UNAVAILABLE", _POSTGRES_AWAY, {}),
    ),
    # Postgres errors that may pass, by SQLSTATE class (before: a 500 INTERNAL_ERROR each).
    (
        asyncpg.exceptions.OperatorInterventionError("x"),
        (503, "2", "READ_MODELS_UNAVAILABLE", _POSTGRES_AWAY, {}),
    ),
    (_unknown_sqlstate("57P99"), (503, "2", "READ_MODELS_UNAVAILABLE", _POSTGRES_AWAY, {})),
    (asyncpg.exceptions.DeadlockDetectedError("x"), (503, "1", "READ_CONFLICT", _CONFLICT, {})),
    (asyncpg.exceptions.SerializationError("x"), (503, "1", "READ_CONFLICT", _CONFLICT, {})),
    (_unknown_sqlstate("40P99"), (503, "1", "READ_CONFLICT", _CONFLICT, {})),
    (asyncpg.exceptions.OutOfMemoryError("x"), (503, "5", "READ_MODELS_OVERLOADED", _SHORT, {})),
    (asyncpg.exceptions.DiskFullError("x"), (503, "5", "READ_MODELS_OVERLOADED", _SHORT, {})),
    (asyncpg.TooManyConnectionsError("x"), (503, "5", "READ_MODELS_OVERLOADED", _SHORT, {})),
    (_unknown_sqlstate("53999"), (503, "5", "READ_MODELS_OVERLOADED", _SHORT, {})),
    (
        asyncpg.exceptions.LockNotAvailableError("x"),
        (503, "5", "READ_STATEMENT_TIMEOUT", _LOCK_TIMEOUT, {}),
    ),
    # Not errors that pass: an object in the wrong state, a SQLSTATE of no transient class.
    (
        asyncpg.exceptions.ObjectNotInPrerequisiteStateError("x"),
        (500, None, "INTERNAL_ERROR", _OURS, {}),
    ),
    (_unknown_sqlstate("XX999"), (500, None, "INTERNAL_ERROR", _OURS, {})),
    (
        ReadModelsTimeout(2.5),
        (
            503,
            "5",
            "READ_MODELS_TIMEOUT",
            "The read models (Postgres) did not answer within 2.5 s; try again shortly, and "
            "tell the operator if it lasts.",
            {},
        ),
    ),
    (
        ReadModelsOfAnotherVersion(
            "READ_MODELS_NEWER", "Upgrade this API.", {"found_version": 9}, retry_after_seconds=7
        ),
        (503, "7", "READ_MODELS_NEWER", "Upgrade this API.", {"found_version": 9}),
    ),
    (
        asyncpg.InvalidAuthorizationSpecificationError("no"),
        (
            503,
            "30",
            "POSTGRES_REFUSED",
            "The read models' database (Postgres) refuses this API's connection "
            "(InvalidAuthorizationSpecificationError): check database_url (its user, password "
            "and database name) and that the database exists; tell the operator.",
            {},
        ),
    ),
    (
        ApiError(503, "REPORT_CONFLICT", "Send it again.", headers={"Retry-After": "1"}),
        (503, "1", "REPORT_CONFLICT", "Send it again.", {}),
    ),
    (
        ApiError(404, "JOB_NOT_FOUND", "There is no job with id 'j1'.", job_id="j1"),
        (404, None, "JOB_NOT_FOUND", "There is no job with id 'j1'.", {"job_id": "j1"}),
    ),
    (
        RuntimeError("boom"),
        (
            500,
            None,
            "INTERNAL_ERROR",
            "Something went wrong on our side; it has been logged.",
            {},
        ),
    ),
]


@pytest.mark.parametrize(
    ("error", "answer"), ANSWERS, ids=[f"{type(error).__name__}-{error}" for error, _ in ANSWERS]
)
async def test_each_failure_of_a_route_is_answered_with_its_status_retry_after_code_and_sentence(
    error: Exception, answer: tuple[int, str | None, str, str, dict[str, Any]]
) -> None:
    """A client meets the same status, wait, code and sentence for each failure as before the
    503s were built by one helper."""
    status, retry_after, code, message, extra = answer

    @get("/read")
    async def read() -> str:
        raise error

    response = await answer_to_get(read)
    assert response.status_code == status, response.text
    assert response.headers.get("retry-after") == retry_after
    assert response.headers["content-type"] == "application/json"
    assert msgspec.json.decode(response.content) == {
        "error": {"code": code, "message": message, **extra}
    }


# The failures of ANSWERS a read of the read models meets: what the fast path of the list and
# log reads (jobs_fastpath.py) answers itself instead of handing the request to Litestar.
# Chosen by their answer, not by the table, so that one the table leaves out fails below.
READ_FAILURE_ANSWERS = [
    (error, answer)
    for error, answer in ANSWERS
    if not isinstance(error, ApiError | HTTPException | nats.errors.Error) and answer[0] != 500
]


@pytest.mark.parametrize(
    ("error", "answer"),
    READ_FAILURE_ANSWERS,
    ids=[f"{type(error).__name__}-{error}" for error, _ in READ_FAILURE_ANSWERS],
)
async def test_the_fast_path_answers_each_failed_read_as_litestar_does(
    error: Exception, answer: tuple[int, str | None, str, str, dict[str, Any]]
) -> None:
    """Each failure of a read in or on the way to Postgres gets the same status, wait, code and
    sentence from the fast path's look-up (errors.read_failure) as through Litestar's exception
    handlers: one table, whichever path served the request."""
    status, retry_after, code, message, extra = answer
    refused = errors.read_failure("/api/jobs", error)
    assert refused is not None
    assert refused.status == status
    assert dict(refused.raw_headers()).get(b"retry-after") == (
        None if retry_after is None else retry_after.encode()
    )
    assert msgspec.json.decode(msgspec.json.encode(refused.body())) == {
        "error": {"code": code, "message": message, **extra}
    }


def test_the_fast_path_hands_over_what_is_no_failed_read_that_may_pass() -> None:
    """A refusal of the API's own (a job not found), an error of the API's code, a Postgres
    error no retry mends: not answered by the read-failure table; the fast path hands the
    first two to Litestar, which answers them (a 404, a 500 with its traceback), and answers
    the last itself as that 500 (jobs_fastpath.py)."""
    assert errors.read_failure("/api/jobs", errors.job_not_found("j1")) is None
    assert errors.read_failure("/api/jobs", RuntimeError("boom")) is None
    assert errors.read_failure("/api/jobs", _unknown_sqlstate("XX999")) is None
    assert errors.read_failure("/api/jobs", asyncpg.UndefinedTableError("x")) is None


async def test_an_extra_field_named_code_or_message_cannot_replace_the_errors_own() -> None:
    """Extra fields (a gate's version details, a request's limit) sit beside the code and
    the sentence; one that happens to be called ``code`` or ``message`` does not replace
    them. Before: the client was answered the extra's value as the error's code."""

    @get("/refused")
    async def refused() -> str:
        raise ApiError(409, "JOB_FINISHED", "The job has finished.", code="X", message="y", n=1)

    response = await answer_to_get(refused)
    assert response.status_code == 409, response.text
    body = msgspec.json.decode(response.content)["error"]
    assert (body["code"], body["message"], body["n"]) == (
        "JOB_FINISHED",
        "The job has finished.",
        1,
    )
