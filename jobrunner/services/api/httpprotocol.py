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

What this relies on of uvicorn (its pin in pyproject.toml; tests/unit/test_httpprotocol.py fails
loudly when any of it is gone): ``HttpToolsProtocol`` calls ``send_400_response`` inside its
``except httptools.HttpParserError`` of ``data_received``, takes its parser's callbacks
(``on_headers_complete``, ``on_body``, ``on_message_complete``) from its own methods, and keeps
the request in progress in ``cycle`` (``response_started``, ``response_complete``,
``disconnected``).
"""

from __future__ import annotations

import sys
from http import HTTPStatus
from typing import Any

import httptools
import msgspec
import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from jobrunner.common.logging import LogThrottle
from jobrunner.services.api.errors import REFUSAL_LOG_INTERVAL, ApiError

log = structlog.get_logger()

# A request's line and headers together, as sent (and, in a chunked body, a chunk's size line
# or the trailers): a browser's are a few KiB (cookies and all); proxies allow 8-64 KiB.
MAX_REQUEST_HEAD_BYTES = 64 * 1024

# The parser's reason is one of llhttp's fixed sentences; cut anyway, as a sentence that quotes
# what a client sent would be (errors.MAX_ECHOED_ID).
MAX_REASON_CHARS = 100

HEAD_TOO_LARGE_LOG = LogThrottle(REFUSAL_LOG_INTERVAL)


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
    printable = "".join(char for char in reason if " " <= char <= "~").strip()
    if not printable:
        return "not an HTTP/1.1 request"
    if len(printable) > MAX_REASON_CHARS:
        printable = printable[:MAX_REASON_CHARS] + "..."
    return printable[0].lower() + printable[1:]


def malformed_request(error: BaseException | None) -> ApiError:
    """400: the parser refused the request (``error``, its exception, when known)."""
    return ApiError(
        400,
        "MALFORMED_REQUEST",
        f"The request is not valid HTTP/1.1 ({parser_reason(error)}); nothing was done. "
        "Correct the request and send it on a new connection.",
    )


def head_too_large() -> ApiError:
    """431: a request's line and headers (or its chunked body's framing) over the limit."""
    return ApiError(
        431,
        "REQUEST_HEAD_TOO_LARGE",
        f"The request line and headers may be at most {MAX_REQUEST_HEAD_BYTES} bytes "
        "together (as may a chunked body's chunk size lines and trailers); send shorter "
        "headers (a smaller cookie or token).",
        limit=MAX_REQUEST_HEAD_BYTES,
    )


class ApiHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing what it cannot parse, or reads without bound, with
    the API's JSON errors (``MALFORMED_REQUEST``, ``REQUEST_HEAD_TOO_LARGE``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes read since the parser last gave body data or ended a request: the head being
        # read (or a chunked body's size line or trailers), bounded by MAX_REQUEST_HEAD_BYTES.
        self._stretch_bytes = 0
        # Counts the parser's head ends, body data and request ends, by which a piece read is
        # known to break the stretch.
        self._progress = 0

    def data_received(self, data: bytes) -> None:
        # Fed in pieces of at most what the stretch may still hold: a head is known to be past
        # the limit at the byte that passes it, whatever reads carried it, and httptools never
        # holds more of it.
        view = memoryview(data)
        while view and not self.transport.is_closing():
            room = MAX_REQUEST_HEAD_BYTES - self._stretch_bytes
            piece, view = view[:room], view[room:]
            progress = self._progress
            super().data_received(piece)  # type: ignore[arg-type]  # httptools takes any buffer
            if self._progress != progress:
                # The head's end, body data or the request's end in this piece: what follows
                # them in it is not counted (where they lie in it is not known), at most one
                # piece.
                self._stretch_bytes = 0
                continue
            self._stretch_bytes += len(piece)
            if self._stretch_bytes >= MAX_REQUEST_HEAD_BYTES and not self.transport.is_closing():
                # As many bytes as the limit and the head (or trailers) not ended: one more
                # is past it.
                self._refuse_head_too_large()

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

    def on_headers_complete(self) -> None:
        self._progress += 1
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._progress += 1
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._progress += 1
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this inside its ``except httptools.HttpParserError`` (and has logged
        # ``msg``): the exception being handled is the parser's.
        self._refuse(malformed_request(sys.exception()))

    def _refuse(self, error: ApiError) -> None:
        """Answer ``error`` as JSON and close the connection; only close it when a response is
        under way (a second status line inside it would corrupt it for the client)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The route running for the request in progress (its body was malformed) must not
            # answer after this: its sends are dropped, as once the client is gone.
            under_way = cycle.response_started
            cycle.disconnected = True
            if under_way:
                self.transport.close()
                return
        body = msgspec.json.encode(error.body())
        status = HTTPStatus(error.status)
        head = [b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))]
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
            *error.raw_headers(),
        ]
        head += [b"%s: %s\r\n" % header for header in headers]
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
