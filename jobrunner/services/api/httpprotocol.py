"""The API's HTTP/1.1 connections: uvicorn's httptools protocol, with every request its parser
refuses answered as the API answers any error, and a request's head bounded in bytes.

uvicorn answers a request llhttp cannot parse (a control byte in a header value, a malformed
request line or header name, a bad ``Content-Length`` or chunk) with a plain-text ``400 Invalid
HTTP request received.`` before any route sees it, while a client of the API reads every error as
JSON with a code. Here it is ``400 MALFORMED_REQUEST``, its sentence giving the parser's reason.

uvicorn's httptools protocol also reads a request's line and headers without any bound (its h11
protocol has ``h11_max_incomplete_event_size``; this one has nothing): httptools joins the pieces
of a header as they arrive, each read copying all that came before, so one client sending an
endless header grew the API's memory and CPU for as long as it sent. Here a stretch of a request
that carries no body data (its line and headers; in a chunked body, a chunk's size line or the
trailers) is refused with ``431 REQUEST_HEAD_TOO_LARGE`` once it passes ``MAX_REQUEST_HEAD_BYTES``.

A request's head must also arrive within ``request_head_timeout_seconds`` of its first byte, else
``408 REQUEST_HEAD_TIMEOUT``: a client sending it slowly would hold its connection and its bytes
(uvicorn has no such deadline). The time an earlier request's answer takes is not counted: the
deadline starts whole again when that answer ends. A new connection that sends nothing within the
deadline is closed without an answer (uvicorn arms its keep-alive timeout only after an answer,
so such a connection stayed open for ever).

A refusal answers the request it belongs to, never one before it: when a client sends a bad
request behind one whose route is running (pipelined, or simply sent before the answer came),
that route's answer is sent whole, the connection then closed, and the bad request is left
unanswered, which tells the client to send it again (RFC 9112 section 9.3.2). A request answered
already (refused at its head) whose body then proves malformed gets no second answer either: the
connection closes. uvicorn starts a request's route once its head is read, while its body may
still be on its way; a route that takes no body (a cancel) acts at once. So a body that proves
malformed after its request was handed to the route is answered with a sentence saying the
request may have been acted on (``acted_on: "unknown"``), not that nothing was done
(``acted_on: "no"``, said of a request refused before any route saw it).

``data_received`` feeds the parser itself (uvicorn's own would answer in plain text). What this
relies on of uvicorn (tests/unit/test_httpprotocol.py fails loudly when any of it is gone): the
protocol's ``connection_made``, ``on_response_complete`` (called when an answer ends),
``parser``, ``cycle``, ``pipeline`` (of ``(cycle, app)``, newest first),
``_unset_keepalive_if_required``, ``_should_upgrade``, ``handle_websocket_upgrade`` and
``_unsupported_upgrade_warning``; the cycle's ``more_body``, ``keep_alive``, ``response_started``,
``response_complete`` and ``disconnected``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import httptools
import msgspec
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from jobrunner.common.logging import LogThrottle
from jobrunner.common.settings import Settings
from jobrunner.services.api.errors import REFUSAL_LOG_INTERVAL, ApiError

log = structlog.get_logger()

# A request's line and headers together, as sent (and, in a chunked body, a chunk's size line
# or the trailers): a browser's are a few KiB (cookies and all); proxies allow 8-64 KiB.
MAX_REQUEST_HEAD_BYTES = 64 * 1024

# The parser's reason is one of llhttp's fixed sentences; cut anyway, as a sentence that quotes
# what a client sent would be (errors.MAX_ECHOED_ID).
MAX_REASON_CHARS = 100

# One line per kind per REFUSAL_LOG_INTERVAL: a client sending malformed requests in a loop
# must not flood the log (uvicorn logged each).
MALFORMED_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)
HEAD_TOO_LARGE_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)
HEAD_TIMEOUT_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def parser_reason(error: BaseException | None) -> str:
    """What the parser said was wrong with a request, in printable ASCII and at most
    ``MAX_REASON_CHARS`` characters."""
    if isinstance(error, httptools.HttpParserCallbackError):
        # A callback of uvicorn's failed on what the parser let through: its reason names
        # uvicorn's callback ("`on_url` callback error"), nothing a client can act on.
        if isinstance(error.__context__, httptools.HttpParserInvalidURLError):
            return "invalid request target"
        return "the request line or headers could not be read"
    reason = str(error) if isinstance(error, httptools.HttpParserError) else ""
    if "pri/upgrade" in reason.lower():
        # llhttp stops at HTTP/2's preface ("PRI * HTTP/2.0") with "Pause on PRI/Upgrade".
        return "HTTP/2 is not served here; use HTTP/1.1"
    printable = "".join(char for char in reason if " " <= char <= "~").strip()
    if not printable:
        return "not an HTTP/1.1 request"
    if len(printable) > MAX_REASON_CHARS:
        printable = printable[:MAX_REASON_CHARS] + "..."
    return printable[0].lower() + printable[1:]


def malformed_request(error: BaseException | None, handed_on: bool = False) -> ApiError:
    """400: the parser refused the request (``error``, its exception, when known).
    ``handed_on``: its body proved malformed after its route was started, which may have acted."""
    if handed_on:
        return ApiError(
            400,
            "MALFORMED_REQUEST",
            f"The request's body is not valid HTTP/1.1 ({parser_reason(error)}); it proved "
            "malformed after the request had been passed on, so it may have been acted on. "
            "Check the state of what it addressed before sending it again, corrected, on a new "
            "connection.",
            acted_on="unknown",
        )
    return ApiError(
        400,
        "MALFORMED_REQUEST",
        f"The request is not valid HTTP/1.1 ({parser_reason(error)}); nothing was done. "
        "Correct the request and send it on a new connection.",
        acted_on="no",
    )


def head_too_large() -> ApiError:
    """431: a request's line and headers (or its chunked body's framing) over the limit."""
    return ApiError(
        431,
        "REQUEST_HEAD_TOO_LARGE",
        f"The request line and headers may be at most {MAX_REQUEST_HEAD_BYTES} bytes "
        "together (as may a chunked body's chunk size lines and trailers); send a shorter "
        "request line (address and query) or shorter headers (a smaller cookie or token).",
        limit=MAX_REQUEST_HEAD_BYTES,
    )


def head_timeout(seconds: float) -> ApiError:
    """408: a request's line and headers not all there ``seconds`` after their first byte."""
    return ApiError(
        408,
        "REQUEST_HEAD_TIMEOUT",
        f"The request line and headers did not all arrive within {seconds:g} s of their first "
        "byte; nothing was done. Send the request again, whole.",
        limit_seconds=seconds,
    )


def error_answer(error: ApiError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The status, headers and body answering ``error`` on a connection then closed."""
    body = msgspec.json.encode(error.body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
        *error.raw_headers(),
    ]
    return error.status, headers, body


def answering(error: ApiError) -> ASGIApp:
    """An ASGI app answering every request with ``error`` (and ``Connection: close``)."""
    status, headers, body = error_answer(error)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def protocol_for(settings: Settings) -> type[ApiHttpProtocol]:
    """The protocol class to hand uvicorn (``http=``) for an API with ``settings``."""
    return type(
        "ConfiguredApiHttpProtocol",
        (ApiHttpProtocol,),
        {"head_timeout_seconds": settings.request_head_timeout_seconds},
    )


class ApiHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing what it cannot parse, reads without bound or
    waits on without end, with the API's JSON errors (``MALFORMED_REQUEST``,
    ``REQUEST_HEAD_TOO_LARGE``, ``REQUEST_HEAD_TIMEOUT``)."""

    # protocol_for sets it from the settings; the default's, for a protocol made without.
    head_timeout_seconds: float = Settings().request_head_timeout_seconds

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes read since the parser last gave body data or ended a request: the head being
        # read (or a chunked body's size line or trailers), bounded by MAX_REQUEST_HEAD_BYTES.
        self._stretch_bytes = 0
        # Counts the parser's head ends, body data and request ends, by which a piece read is
        # known to break the stretch.
        self._progress = 0
        # False once nothing more is to be read from the client: a request refused, or one
        # that closes the connection (``Connection: close``, HTTP/1.0) read whole. What comes
        # after is dropped unread, neither parsed nor counted.
        self._reading = True
        # Armed when the connection is made and at a head's first byte, cancelled at the head's
        # end (or the connection's).
        self._head_deadline: asyncio.TimerHandle | None = None
        # True from a head's first byte to its end.
        self._head_open = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Until the first byte, the deadline bounds a connection that sends nothing at all.
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        if not self._reading:
            return
        self._unset_keepalive_if_required()
        # Fed in pieces of at most what the stretch may still hold: a head is known to be past
        # the limit at the byte that passes it, whatever reads carried it, and httptools never
        # holds more of it.
        view = memoryview(data)
        while view and self._reading and not self.transport.is_closing():
            room = MAX_REQUEST_HEAD_BYTES - self._stretch_bytes
            piece, view = view[:room], view[room:]
            progress = self._progress
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                # As uvicorn's own data_received.
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError as error:
                self._refuse_malformed(error)
                return
            if self._progress != progress:
                # The head's end, body data or the request's end in this piece: what follows
                # them in it is not counted (where they lie in it is not known), at most one
                # piece, so a head following another request's end in one read may reach
                # twice the limit before it is refused.
                self._stretch_bytes = 0
                continue
            self._stretch_bytes += len(piece)
            if self._stretch_bytes >= MAX_REQUEST_HEAD_BYTES:
                # As many bytes as the limit and the head (or trailers) not ended: one more
                # is past it.
                self._refuse_head_too_large()

    def _refuse_malformed(self, error: httptools.HttpParserError) -> None:
        left_out = MALFORMED_LOG.admit()
        if left_out is not None:
            log.warning(
                "malformed request refused",
                client=self.client,
                reason=parser_reason(error),
                **({"since_last": left_out} if left_out else {}),
            )
        self._refuse(malformed_request(error), malformed_request(error, handed_on=True))

    def _refuse_head_too_large(self) -> None:
        left_out = HEAD_TOO_LARGE_LOG.admit()
        if left_out is not None:
            log.warning(
                "request head too large",
                client=self.client,
                limit=MAX_REQUEST_HEAD_BYTES,
                **({"since_last": left_out} if left_out else {}),
            )
        self._refuse(head_too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_open = True
        self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._cancel_head_deadline()
        self._progress += 1
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._head_open and not self.transport.is_closing():
            # The head begun while this answer was under way gets its whole time from now: its
            # client may have waited for the answer before sending the rest.
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.head_timeout_seconds, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self._reading or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # An earlier request is still being answered: its client may wait for that answer
            # before sending the rest, and the server does not read while a pipelined request
            # waits its turn. on_response_complete starts the head's time again.
            self._arm_head_deadline()
            return
        if not self._head_open:
            # A new connection that sent nothing: no request to answer (a 408 could be taken
            # for the answer to one the client is just sending), only a connection to end.
            self.transport.close()
            return
        left_out = HEAD_TIMEOUT_LOG.admit()
        if left_out is not None:
            log.warning(
                "request head timed out",
                client=self.client,
                limit_seconds=self.head_timeout_seconds,
                **({"since_last": left_out} if left_out else {}),
            )
        self._refuse(head_timeout(self.head_timeout_seconds))

    def on_body(self, body: bytes) -> None:
        self._progress += 1
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._progress += 1
        super().on_message_complete()
        if not self.parser.should_keep_alive():
            # The connection closes after this request's answer: what the client sends after
            # it is no request of its (llhttp ignores it too, uvicorn asking it to).
            self._reading = False

    def _refuse(self, error: ApiError, while_route_runs: ApiError | None = None) -> None:
        """Stop reading and refuse the request ``error`` belongs to: the one being read. No
        answer under way for an earlier request is cut or followed by a status line of its.
        ``while_route_runs``: the answer instead when that request's route is running (its
        body is being read), if it differs."""
        self._reading = False
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and cycle.more_body:
            # The request whose body is bad was answered before its body ended (refused at its
            # head: 401, 415, ...): a second answer would be read as the next request's. The
            # connection only closes.
            self.transport.close()
        elif cycle is None or cycle.response_complete:
            # Every request before it answered: the error is in a new request's head.
            self._answer_now(error)
        elif not cycle.more_body:
            # The latest request was read whole and its route is running (or waiting behind
            # an earlier one): the error is in a request after it, whose head is not read.
            # The route answers; the connection closes after it, the bad request unanswered.
            cycle.keep_alive = False
        elif self.pipeline and self.pipeline[0][0] is cycle:
            # The request whose body is bad waits behind an earlier one being answered: it is
            # answered the error in its turn, its route never run.
            self.pipeline[0] = (cycle, answering(error))
        else:
            # The body of the request whose route is running is bad: the route reads no more
            # of it, and must not answer after this (its sends are dropped, as once the client
            # is gone). An answer it has begun is only cut: a second status line inside it
            # would corrupt it for the client.
            cycle.disconnected = True
            if cycle.response_started:
                self.transport.close()
            else:
                self._answer_now(while_route_runs or error)

    def _answer_now(self, error: ApiError) -> None:
        status, headers, body = error_answer(error)
        phrase = HTTPStatus(status).phrase.encode("ascii")
        head = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
        head += [b"%s: %s\r\n" % header for header in self.server_state.default_headers]
        head += [b"%s: %s\r\n" % header for header in headers]
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
