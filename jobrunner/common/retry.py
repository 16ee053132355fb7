"""The retry policy: which NATS errors can succeed later, and how long to wait between tries.

Retries retry only what can succeed later (ARCHITECTURE invariant 10). A timeout, a server that
has no responder yet, a connection that is reconnecting, JetStream answering 503 (no quorum, the
stream leader moving) all pass; a message over the server's ``max_payload``, a request the server
calls bad, a permission it denies, an event that cannot be encoded never will, so they raise at
once instead of blocking a job forever.

Backoff comes from ``stamina`` (exponential with jitter, capped); each retry is logged as
``stamina.retry_scheduled`` with what is retried and its cause (:func:`log_retry`). Loops that
restart something rather than retry one call (the supervisor restarting a service) take their wait
from :func:`delay_after`.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import nats.errors
import nats.js.errors
import stamina
import stamina.instrumentation
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from jobrunner.common import metrics, stopping

log = structlog.get_logger()

# What the retry under way in this task is for (``until_done``'s ``what``): stamina names a
# ``retry_context`` block "<context block>", which tells an operator nothing.
_retrying: contextvars.ContextVar[str | None] = contextvars.ContextVar("retrying", default=None)


def log_retry(details: stamina.instrumentation.RetryDetails) -> None:
    """stamina's retry log line, naming what is retried rather than "<context block>"."""
    what = _retrying.get() if details.name == "<context block>" else details.name
    log.warning(
        "stamina.retry_scheduled",
        retrying=what or details.name,
        retry_num=details.retry_num,
        caused_by=repr(details.caused_by),
        wait_for=round(details.wait_for, 2),
        waited_so_far=round(details.waited_so_far, 2),
    )


# Instead of stamina's structlog hook (its Prometheus counter stays).
stamina.instrumentation.set_on_retry_hooks(
    [stamina.instrumentation.PrometheusOnRetryHook, log_retry]
)

T = TypeVar("T")

# Short first waits (a reconnect usually takes a fraction of a second), never more than this
# between tries so that a returning server is used promptly.
FIRST_WAIT = 0.05
LONGEST_WAIT = 2.0
JITTER = 0.1

_TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,  # nats.errors.TimeoutError is one too
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionDrainingError,
    ConnectionError,
)
# JetStream API error codes that say "not now" rather than "never": 503 is "JetStream not
# available / no quorum / insufficient resources for the moment".
_TRANSIENT_API_CODES = frozenset({503})


# While a JetStream cluster forms, or while one of its nodes is down, creating a replicated
# stream is refused with these error codes; they pass once the nodes are there.
_FORMING_API_ERRORS = frozenset(
    {
        10005,  # no suitable peers for placement (fewer nodes known than replicas asked)
        10008,  # JetStream system temporarily unavailable
        10023,  # insufficient resources
    }
)
# How often "waiting for JetStream" is logged again while the wait goes on.
WAIT_LOG_SECONDS = 5.0
# JetStream's "stream not found" and "consumer not found" (nats-py's BucketNotFoundError, for a
# bucket, has no code). A start step meets one when what it uses was declared a moment before
# (by ``ensure_topology`` or the step before) and the cluster node that answers has not applied
# the declaration yet: a meta leader just elected and still catching up, a stream whose
# replicas have not elected their first leader. That lasts a moment: the step is tried again
# for this long. Past it the thing is missing for good (deleted by an operator, or never made):
# waiting would not bring it back, so the error is raised, the service exits and its
# supervisor runs the whole start again, whose declaration creates it anew.
NOT_FOUND_GRACE_SECONDS = 10.0
_NOT_FOUND_API_ERRORS = frozenset({10059, 10014})


class PublishRefused(Exception):
    """NATS refused a message for good; ``code`` is machine-readable, ``str()`` a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def delay_after(failures: int, first: float = FIRST_WAIT, longest: float = LONGEST_WAIT) -> float:
    """The wait after ``failures`` failures in a row: ``first``, doubling, at most ``longest``."""
    return min(longest, first * 2.0 ** min(max(failures, 1) - 1, 30))


def is_transient(exc: BaseException) -> bool:
    """True when the same request may succeed if simply sent again later."""
    if isinstance(exc, nats.js.errors.APIError):
        return exc.code in _TRANSIENT_API_CODES
    return isinstance(exc, _TRANSIENT)


def refusal(exc: BaseException, what: str) -> PublishRefused:
    """The permanent error as a clear one: what was refused and why it will never pass."""
    if isinstance(exc, nats.errors.MaxPayloadError):
        return PublishRefused(
            "MESSAGE_TOO_LARGE", f"{what} is larger than the NATS server's max_payload."
        )
    if isinstance(exc, nats.errors.AuthorizationError) or (
        isinstance(exc, nats.js.errors.APIError) and exc.code == 403
    ):
        return PublishRefused("PERMISSION_DENIED", f"NATS does not permit publishing {what}.")
    if isinstance(exc, nats.js.errors.BadRequestError):
        return PublishRefused(
            "BAD_REQUEST", f"JetStream rejected {what} as a bad request: {exc.description}"
        )
    if isinstance(exc, (msgspec.EncodeError, TypeError, ValueError)):
        return PublishRefused("UNENCODABLE", f"{what} cannot be encoded: {exc}")
    return PublishRefused("PUBLISH_REFUSED", f"NATS refused {what}: {exc!r}")


class NotYetVisible(Exception):
    """A start-up step found missing a stream it had just created or found in use. In a
    cluster the node that answers may not have applied the creation yet (a meta leader just
    elected answers "stream not found" until it has caught up): the step is tried again."""


def is_not_found(exc: BaseException) -> bool:
    """True for a stream, a bucket or a consumer that JetStream says is not there."""
    return isinstance(exc, nats.js.errors.BucketNotFoundError) or (
        getattr(exc, "err_code", None) in _NOT_FOUND_API_ERRORS
    )


def is_forming(exc: BaseException) -> bool:
    """True when JetStream may accept the request once its cluster has formed (or a node is
    back): everything transient, the refusals of a cluster short of nodes, and a creation not
    yet visible."""
    if isinstance(exc, NotYetVisible):
        return True
    # Not every APIError subclass sets err_code (KeyNotFoundError does not).
    if getattr(exc, "err_code", None) in _FORMING_API_ERRORS:
        return True
    return is_transient(exc)


async def until_jetstream_ready(operation: Callable[[], Awaitable[T]], what: str) -> T:
    """Run a start-up step (declaring the stream, opening a bucket) until JetStream accepts it.

    A service started before its NATS cluster has formed, or while a node is down, waits here
    instead of exiting, and says what it waits for (``waiting for JetStream``, at once and every
    ``WAIT_LOG_SECONDS``); a permanent refusal (a bad configuration) raises at once. A stream,
    bucket or consumer not found is waited for ``NOT_FOUND_GRACE_SECONDS`` (a declaration not
    yet applied by the node that answers), then raised (see there).
    """
    failures = 0
    logged = 0.0
    missing_since: float | None = None
    request_timeout = StartTimeout()
    while True:
        step = _start_request_timeout.set(request_timeout.seconds)
        try:
            result = await operation()
        except Exception as exc:
            now = time.monotonic()
            if is_not_found(exc):
                missing_since = now if missing_since is None else missing_since
                if now - missing_since >= NOT_FOUND_GRACE_SECONDS:
                    log.error(
                        "still not found: the start begins again",
                        waiting_for=what,
                        reason=str(exc) or type(exc).__name__,
                        waited=round(now - missing_since, 1),
                    )
                    raise
            elif not is_forming(exc):
                raise
            else:
                missing_since = None  # found since, or an outage between: the grace starts anew
            request_timeout.after(exc)
            failures += 1
            if now - logged >= WAIT_LOG_SECONDS:
                logged = now
                log.warning(
                    "waiting for JetStream",
                    waiting_for=what,
                    reason=str(exc) or type(exc).__name__,
                    attempts=failures,
                )
            stopping.raise_if_being_cancelled()  # (see until_done)
            await asyncio.sleep(delay_after(failures))
            continue
        finally:
            _start_request_timeout.reset(step)
        if failures:
            log.info("JetStream ready", waited_for=what, attempts=failures + 1)
        return result


# How long a start waits for JetStream's answer to one of its requests before sending it again
# (nats-py's default is 5 s). On a cluster a request about a replicated stream just created, by
# this start or by another starting at the same moment, can get no answer at all while the
# stream's replicas elect their first leader (only a leader answers, the other replicas stay
# silent): measured on 3 nodes, 1-10 requests a round of starts together met that, each waiting
# the whole timeout. The start's requests (a look, a create, an update to the same
# configuration) are idempotent, so sending one again is safe, and a later one meets the leader.
START_REQUEST_TIMEOUT = 1.0
# nats-py's default: what a start waits at most, after timeouts in a row.
LONGEST_START_REQUEST_TIMEOUT = 5.0
# The timeout of the current try of the step ``until_jetstream_ready`` runs (None outside one).
_start_request_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "start_request_timeout", default=None
)


class StartTimeout:
    """The request timeout of a start's tries: ``START_REQUEST_TIMEOUT`` first; a JetStream
    slower than that (a far cluster, one under load) must still be served, so each try that
    timed out doubles it, up to nats-py's default; any other failure sets it back."""

    def __init__(self) -> None:
        self.seconds = START_REQUEST_TIMEOUT

    def after(self, exc: BaseException) -> None:
        """The try failed with ``exc`` (or with an error whose cause is ``exc``)."""
        timed_out = isinstance(exc, TimeoutError) or isinstance(exc.__cause__, TimeoutError)
        self.seconds = (
            min(2 * self.seconds, LONGEST_START_REQUEST_TIMEOUT)
            if timed_out
            else START_REQUEST_TIMEOUT
        )


def start_context(js: JetStreamContext) -> JetStreamContext:
    """``js`` with the start's request timeout: in a step run by :func:`until_jetstream_ready`,
    ``START_REQUEST_TIMEOUT`` on its first try, doubled after each try that timed out; anywhere
    else ``js`` itself. For a start step's own requests only, never for a handle kept
    afterwards (a bucket, a subscription), whose requests keep the default."""
    timeout = _start_request_timeout.get()
    if timeout is None:
        return js
    return JetStreamContext(js._nc, prefix=js._prefix, timeout=timeout)


def start_bucket(kv: KeyValue) -> KeyValue:
    """``kv`` on the start's context (:func:`start_context`), for a start step's own requests;
    ``kv`` itself outside a step."""
    starting = start_context(kv._js)
    if starting is kv._js:
        return kv
    return KeyValue(name=kv._name, stream=kv._stream, pre=kv._pre, js=starting, direct=kv._direct)


async def until_done(operation: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``operation`` until it succeeds: transient errors are retried forever with backoff,
    a permanent one raises :class:`PublishRefused` at once (the cause chained)."""
    # The first try runs bare: building stamina's retry state costs more than a publish itself,
    # and the runner publishes thousands of times a second (100 jobs printing lines).
    try:
        return await operation()
    except Exception as exc:
        if not is_transient(exc):
            raise refusal(exc, what) from exc
        failed: Exception | None = exc
    named = _retrying.set(what)
    try:
        async for attempt in stamina.retry_context(
            on=is_transient,
            attempts=None,
            timeout=None,
            wait_initial=FIRST_WAIT,
            wait_max=LONGEST_WAIT,
            wait_jitter=JITTER,
        ):
            with attempt:
                # Never a retry after a cancel nats-py swallowed (not transient: it raises
                # through stamina): the stop's connection close made every retry fail for ever.
                stopping.raise_if_being_cancelled()
                if failed is not None:
                    # The bare try's failure, handed to stamina as its first attempt's: the
                    # backoff and the ``stamina.retry_scheduled`` log are as before.
                    first, failed = failed, None
                    raise first
                metrics.PUBLISH_RETRIES.inc()
                return await operation()
    except Exception as exc:
        if is_transient(exc):  # pragma: no cover - stamina never gives up with no limits
            raise
        raise refusal(exc, what) from exc
    finally:
        _retrying.reset(named)
    raise AssertionError("unreachable: stamina retries forever")  # pragma: no cover
