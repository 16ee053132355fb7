"""The access middleware: every route is closed unless it is on the public allow-list.

For each request it (in this order):

0. refuses a ``Host`` that is not allowed (400, DNS rebinding) and, for a request that changes
   state, one from another site (403) or a body that is not JSON on a route that takes JSON
   (415) — in every mode, ``--no-auth`` included (see ``origin.py``);
1. lets public routes through (``PUBLIC_PATHS`` or a handler with ``opt={"public": True}``), and
   callback routes (``opt={"callback": True}``: an external job's reporting endpoint, which
   checks the job's callback token itself and accepts nothing else);
2. finds the caller from ``Authorization: Bearer <token>`` or the session cookie: none → 401
   (a browser navigating to a page is sent to ``/login`` instead);
3. for a cookie-authenticated request that changes state, checks the Origin and the CSRF token;
4. checks the role: ``opt={"role": "admin"}`` on a handler, else ``viewer`` for GET/HEAD and
   ``operator`` for every other method → 403 when the caller's role is too small;
5. rejects query parameters the handler does not declare (400);
6. caps the open event streams per token (handlers returning ``Stream``/``ServerSentEvent``,
   or ``opt={"sse": True}``) → 429.

Routes added later are covered without doing anything: they are closed by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from dataclasses import dataclass, field
from types import UnionType
from typing import Any, Union, get_args, get_origin
from urllib.parse import quote

import structlog
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg
from litestar.response import ServerSentEvent, Stream
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Message,
    Receive,
    Scope,
    Send,
)

from jobrunner.services.api import sse
from jobrunner.services.api.errors import ApiError
from jobrunner.services.api.httponly import HttpOnly
from jobrunner.services.api.queryparams import reject_unknown
from jobrunner.services.api.security.origin import (
    HostPolicy,
    check_body_encoding,
    check_host,
    check_json_body,
    check_same_origin,
    cross_site,
)
from jobrunner.services.api.security.principal import ANONYMOUS_ADMIN, Principal
from jobrunner.services.api.security.sessions import (
    COOKIE_NAME,
    CSRF_FIELD,
    CSRF_HEADER,
    SessionSigner,
)
from jobrunner.services.api.security.tokens import Role, TokenStore

log = structlog.get_logger()

# Reachable without a token: the health check, the sign-in page, static assets.
PUBLIC_PATHS = re.compile(r"^/(?:health|login|login\.css|favicon\.ico)$|^/static/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_RESERVED_KWARGS = frozenset(
    {"request", "socket", "state", "scope", "headers", "cookies", "body", "data", "self"}
)
_PATH_PARAM_RE = re.compile(r"{(\w+)(?::[^}]*)?}")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}


@dataclass
class StreamLimiter:
    """Counts the open event streams of each token."""

    per_token: int
    open: Counter[str] = field(default_factory=Counter)

    def acquire(self, key: str) -> bool:
        if self.open[key] >= self.per_token:
            return False
        self.open[key] += 1
        return True

    def release(self, key: str) -> None:
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


@dataclass
class Access:
    """What the middleware needs, built in the lifespan (``app.state.access``)."""

    enabled: bool
    store: TokenStore | None
    signer: SessionSigner | None
    streams: StreamLimiter
    hosts: HostPolicy

    async def principal_from(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
        """The caller, or ApiError 401."""
        if not self.enabled:
            return ANONYMOUS_ADMIN
        assert self.store is not None
        assert self.signer is not None
        header = connection.headers.get("authorization")
        if header is not None:
            return await self.bearer_principal(header)
        cookie = connection.cookies.get(COOKIE_NAME)
        if cookie:
            session = self.signer.verify(cookie)
            record = await self.store.usable_record(session.token_id) if session else None
            if record is not None:
                return Principal(
                    record.id, record.name, record.role, record.own_jobs_only, via_session=True
                )
            raise unauthorized("The session has ended; sign in again.")
        raise unauthorized("This needs a token: send 'Authorization: Bearer <token>'.")

    async def bearer_principal(self, header: str) -> Principal:
        """The caller an ``Authorization`` header names, or ApiError 401 (auth switched on)."""
        assert self.store is not None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthorized("Send 'Authorization: Bearer <token>'.")
        record = await self.store.authenticate(value.strip())
        if record is None:
            raise unauthorized("The token is unknown, revoked or expired.")
        return Principal(record.id, record.name, record.role, record.own_jobs_only)


def unauthorized(message: str) -> ApiError:
    return ApiError(
        401, "UNAUTHORIZED", message, headers={"WWW-Authenticate": 'Bearer realm="jobrunner"'}
    )


def required_role(handler: Any, method: str) -> Role:
    declared = handler.opt.get("role") if handler is not None else None
    if declared:
        return Role(declared)
    return Role.VIEWER if method in SAFE_METHODS else Role.OPERATOR


def is_public(handler: Any, path: str) -> bool:
    return bool(PUBLIC_PATHS.match(path)) or bool(handler is not None and handler.opt.get("public"))


def is_callback(handler: Any) -> bool:
    """A route that authenticates its caller itself, by a callback token (``opt["callback"]``)."""
    return bool(handler is not None and handler.opt.get("callback"))


def is_streaming_response(handler: Any) -> bool:
    """A handler answering with a stream: an event stream, and also a download (a log, an
    artifact, an archive). Each counts against the token's open streams (``is_sse``: only the
    event streams)."""
    if handler is None:
        return False
    if handler.opt.get("sse"):
        return True
    if not isinstance(handler, HTTPRouteHandler):
        return False
    annotation = handler.parsed_fn_signature.return_type.annotation
    # A union counts when a stream is one of its answers (an artifact's download answers
    # ``Stream | Response[bytes]``: its bytes, or a 304).
    answers = (
        get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    )
    return any(
        isinstance(answer, type) and issubclass(answer, Stream | ServerSentEvent)
        for answer in answers
    )


# Keyed by id() but holding the handler too: an id is reused once a handler (of an app built
# for one test, say) is gone, and a bare id would hand its answer to a stranger.
_known_query_cache: dict[int, tuple[Any, frozenset[str] | None]] = {}


def known_query_parameters(handler: Any) -> frozenset[str] | None:
    """The query parameters a handler declares (``None``: it takes any, e.g. ``query: dict``)."""
    key = id(handler)
    cached = _known_query_cache.get(key)
    if cached is not None and cached[0] is handler:
        return cached[1]
    known: set[str] = set()
    takes_any = False
    if isinstance(handler, HTTPRouteHandler):
        path_params = {m.group(1) for p in handler.paths for m in _PATH_PARAM_RE.finditer(p)}
        signatures = [handler.parsed_fn_signature]
        for provider in handler.resolve_dependencies().values():
            if getattr(provider, "parsed_fn_signature", None) is not None:
                signatures.append(provider.parsed_fn_signature)
        for signature in signatures:
            for name, definition in signature.parameters.items():
                if name == "query":
                    takes_any = True
                    break
                if name in _RESERVED_KWARGS or name in path_params:
                    continue
                kwarg = definition.kwarg_definition
                if isinstance(kwarg, ParameterKwarg):
                    if kwarg.header or kwarg.cookie:
                        continue
                    known.add(kwarg.query or name)
                elif kwarg is None:
                    known.add(name)
            if takes_any:
                break
    result = None if takes_any else frozenset(known)
    _known_query_cache[key] = (handler, result)
    return result


def same_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """False when the browser says the request comes from another site."""
    return not cross_site(connection)


def takes_form(handler: Any) -> bool:
    """A route the web UI posts an HTML form to (``opt={"form": True}``): it takes a form body,
    not JSON. It is still refused from another site."""
    return bool(handler is not None and handler.opt.get("form"))


def check_write(connection: ASGIConnection[Any, Any, Any, Any], handler: Any) -> None:
    """A request that changes state: from this origin, its body not encoded (compressed), and
    JSON unless the route takes a form."""
    check_same_origin(connection)
    check_body_encoding(connection)
    if not takes_form(handler):
        check_json_body(connection)


async def check_csrf(
    scope: Scope, receive: Receive, connection: ASGIConnection[Any, Any, Any, Any], access: Access
) -> None:
    if not same_origin(connection):
        raise ApiError(403, "CSRF_FAILED", "Cross-site requests are not accepted.")
    cookie = connection.cookies.get(COOKIE_NAME, "")
    presented = connection.headers.get(CSRF_HEADER)
    if presented is None:
        content_type = connection.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            # The form is parsed once and cached on the request for the handler.
            form = await Request(scope, receive).form()
            value = form.get(CSRF_FIELD)
            presented = value if isinstance(value, str) else None
    assert access.signer is not None
    if not access.signer.check_csrf(cookie, presented):
        raise ApiError(
            403,
            "CSRF_FAILED",
            f"A form or HTMX request must carry the CSRF token ('{CSRF_FIELD}' field or "
            "'X-CSRF-Token' header).",
        )


def wants_login_page(connection: ASGIConnection[Any, Any, Any, Any], method: str) -> bool:
    """A browser navigating to a page (not an API call, not an EventSource)."""
    if method not in ("GET", "HEAD") or connection.url.path.startswith("/api/"):
        return False
    accept = connection.headers.get("accept", "")
    return "text/html" in accept


async def redirect(send: Send, location: str) -> None:
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 303,
        "headers": [(b"location", location.encode()), (b"content-length", b"0")],
    }
    await send(start)
    body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
    await send(body)


async def answer_options(scope: Scope, send: Send) -> None:
    """204 with the route's real methods. (Litestar's own OPTIONS answer can list only some of
    them when several handlers share a path; found by schemathesis' Allow check.)"""
    template = scope.get("path_template", scope["path"])
    methods: set[str] = {"OPTIONS"}
    for route in scope["litestar_app"].routes:
        if getattr(route, "path_format", None) == template:
            methods |= set(getattr(route, "methods", ()))
    allow = ", ".join(sorted(methods)).encode()
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 204,
        "headers": [(b"allow", allow), (b"content-length", b"0")],
    }
    await send(start)
    body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
    await send(body)


class AccessMiddleware(HttpOnly):
    """See the module docstring."""

    async def http(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        method: str = scope["method"]
        connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(scope, receive=receive)
        access: Access = scope["litestar_app"].state.access
        if scope["path"] != "/health":  # probes ask by the machine's address; it changes nothing
            check_host(connection, access.hosts)
        writes = method not in SAFE_METHODS
        if method == "OPTIONS":
            await answer_options(scope, send)
            return
        if is_callback(handler):
            # The route checks its own credential, an external job's callback token, and only
            # that: no API token or session is looked at (so none opens it, and no cookie means
            # no CSRF to guard against). The body must still be JSON, but for a file upload
            # (``opt["binary_body"]``), which only the token opens.
            if writes:
                check_body_encoding(connection)
            if writes and not handler.opt.get("binary_body"):
                check_json_body(connection)
            scope["user"] = None
            await self.app(scope, receive, send)
            return
        if is_public(handler, scope["path"]):
            if writes:
                check_write(connection, handler)
            # Public pages may still show who is signed in, so a valid caller is attached.
            try:
                scope["user"] = await access.principal_from(connection)
            except ApiError:
                scope["user"] = None
            await self.app(scope, receive, send)
            return
        try:
            principal = await access.principal_from(connection)
        except ApiError:
            if wants_login_page(connection, method):
                target = scope["path"] + (
                    "?" + scope["query_string"].decode() if scope["query_string"] else ""
                )
                await redirect(send, "/login?next=" + quote(target, safe=""))
                return
            raise
        scope["user"] = principal
        scope["auth"] = principal.token_id
        if writes:
            # After authentication: a caller without a token learns only that it needs one.
            check_write(connection, handler)
        if principal.via_session and writes:
            await check_csrf(scope, receive, connection, access)
        needed = required_role(handler, method)
        if not principal.has_role(needed):
            raise ApiError(
                403,
                "FORBIDDEN",
                f"This needs the {needed.value} role; the token {principal.name!r} is "
                f"{principal.role.value}.",
                required_role=needed.value,
            )
        known = known_query_parameters(handler)
        if known is not None and not getattr(handler, "opt", {}).get("ignores_unknown_query"):
            reject_unknown(connection.query_params.keys(), known)
        if not is_streaming_response(handler):
            await self.app(scope, receive, send)
            return
        key = principal.token_id or principal.name
        if not access.streams.acquire(key):
            raise ApiError(
                429,
                "TOO_MANY_STREAMS",
                f"This token already has {access.streams.per_token} open event streams; "
                "close one first.",
                limit=access.streams.per_token,
            )
        try:
            if access.store is not None and principal.token_id and is_sse(handler):
                await _while_usable(self.app, scope, receive, send, access.store, principal)
            else:
                await self.app(scope, receive, send)
        finally:
            access.streams.release(key)


def is_sse(handler: Any) -> bool:
    """An event stream proper (a job's, the update streams), not a download."""
    return getattr(handler, "media_type", None) == "text/event-stream"


async def _while_usable(
    app: ASGIApp, scope: Scope, receive: Receive, send: Send, store: TokenStore, who: Principal
) -> None:
    """Serve an event stream for as long as its token counts: once the token is revoked (on any
    instance: the token bucket's watch brings it) or expires, the stream ends with one
    ``unavailable`` event saying so, and the client's reconnect answers 401. A download is
    finite and is left to finish."""
    started = False

    async def watched_send(message: Message) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    serving = asyncio.ensure_future(app(scope, receive, watched_send))
    ended = asyncio.ensure_future(store.until_unusable(who.token_id))
    try:
        await asyncio.wait((serving, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
        if not serving.done():
            serving.cancel()
            # Cancelled between frames: a stream's frames are whole sends (or whole direct
            # writes), so what follows starts a frame of its own.
            with contextlib.suppress(asyncio.CancelledError):
                await serving
    if not ended.cancelled() and ended.done() and serving.cancelled():
        log.info("event stream ended: its token no longer counts", token=who.name)
        if not started:
            raise unauthorized("The token is unknown, revoked or expired.")
        frame = sse.frame(
            {
                "code": "UNAUTHORIZED",
                "detail": f"The token {who.name!r} was revoked or has expired; this stream "
                "ends. Sign in again or use another token.",
            },
            event="unavailable",
        )
        await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    serving.result()  # the stream's own end, or its error


# As raw ASGI pairs: Litestar's MutableScopeHeaders decodes every header of the response for
# each name it looks up or sets, ten passes per response (14 µs of CPU a response; now 1.4).
_SECURITY_HEADER_PAIRS = tuple(
    (name.encode("latin-1"), value.encode("latin-1")) for name, value in SECURITY_HEADERS.items()
)


async def add_security_headers(message: Message, scope: Scope) -> None:
    """A before-send hook: every response carries the browser protections (a header the
    response sets itself, such as its own Content-Security-Policy, is kept)."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers") or ())
        present = {name.lower() for name, _ in headers}
        headers.extend(pair for pair in _SECURITY_HEADER_PAIRS if pair[0] not in present)
        message["headers"] = headers
