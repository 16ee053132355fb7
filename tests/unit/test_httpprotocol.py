"""What the API's HTTP protocol (httpprotocol.py) takes from uvicorn is still there, and the
parser's reason it quotes is short and printable."""

from __future__ import annotations

import ast
import inspect
import textwrap

import httptools
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from jobrunner.services.api.httpprotocol import (
    MAX_REASON_CHARS,
    ApiHttpProtocol,
    malformed_request,
    parser_reason,
)


def source_tree(function: object) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]


def assigned_attributes(function: object) -> set[str]:
    return {
        node.attr
        for node in ast.walk(source_tree(function))
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
    }


def test_what_the_protocol_overrides_and_uses_of_uvicorn_is_still_there() -> None:
    """Each method ApiHttpProtocol overrides is one of uvicorn's (an override of a method
    uvicorn no longer has would never be called), and what it reads and calls of uvicorn's
    protocol and request cycle exists: a uvicorn that renames any of it fails here, loudly,
    rather than serving malformed requests in plain text or without a head limit."""
    overridden = {
        name
        for name, value in vars(ApiHttpProtocol).items()
        if callable(value) and not name.startswith("_")
    }
    assert overridden == {
        "data_received",
        "connection_made",
        "connection_lost",
        "on_response_complete",
        "on_message_begin",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
    }
    for name in overridden:
        assert callable(getattr(HttpToolsProtocol, name, None)), name
    for name in (
        "_unset_keepalive_if_required",
        "_should_upgrade",
        "handle_websocket_upgrade",
        "_unsupported_upgrade_warning",
    ):
        assert callable(getattr(HttpToolsProtocol, name, None)), name
    assert {"parser", "cycle", "pipeline", "transport", "server_state", "client", "loop"} <= (
        assigned_attributes(HttpToolsProtocol.__init__)
    )
    assert {
        "more_body",
        "keep_alive",
        "response_started",
        "response_complete",
        "disconnected",
    } <= assigned_attributes(RequestResponseCycle.__init__)
    # The pipeline holds (cycle, app), newest first: a refused request behind a running one
    # has its app replaced there.
    queues = [
        ast.unparse(node)
        for node in ast.walk(source_tree(HttpToolsProtocol.on_headers_complete))
        if isinstance(node, ast.Call) and "pipeline" in ast.unparse(node.func)
    ]
    assert queues == ["self.pipeline.appendleft((self.cycle, app))"], queues
    # The head deadline starts again when an answer ends: each cycle calls back
    # on_response_complete then.
    callbacks = [
        ast.unparse(node.value)
        for node in ast.walk(source_tree(HttpToolsProtocol.on_headers_complete))
        if isinstance(node, ast.keyword) and node.arg == "on_response"
    ]
    assert callbacks == ["self.on_response_complete"], callbacks


def test_the_parsers_reason_is_quoted_in_lower_case() -> None:
    """llhttp's reason, as it says it, begins the sentence's parenthesis in lower case."""
    error = httptools.HttpParserError("Invalid header value char")
    assert parser_reason(error) == "invalid header value char"
    assert "(invalid header value char)" in malformed_request(error).message


def test_a_callback_error_is_told_without_uvicorns_internals() -> None:
    """A callback of uvicorn's failing on a target the parser let through names the target, not
    the callback."""
    error = httptools.HttpParserCallbackError("`on_headers_complete` callback error")
    with pytest.raises(httptools.HttpParserInvalidURLError) as target_error:
        httptools.parse_url(b"http://[::1")
    error.__context__ = target_error.value  # as the parser chains uvicorn's error
    assert parser_reason(error) == "invalid request target"
    other = httptools.HttpParserCallbackError("`on_url` callback error")
    assert "callback" not in parser_reason(other)


def test_http2s_preface_is_told_as_http2() -> None:
    """llhttp's "Pause on PRI/Upgrade" for HTTP/2's preface reads as what it means."""
    error = httptools.HttpParserError("Pause on PRI/Upgrade")
    assert parser_reason(error) == "HTTP/2 is not served here; use HTTP/1.1"


def test_no_error_at_hand_is_still_a_sentence() -> None:
    """Called outside the parser's except (a uvicorn that moved the call): a sentence still."""
    assert parser_reason(None) == "not an HTTP/1.1 request"
    assert malformed_request(None).code == "MALFORMED_REQUEST"


@hypothesis_settings(deadline=None)
@given(st.text())
def test_any_reason_is_quoted_short_and_printable(reason: str) -> None:
    """Whatever a parser's reason holds, the sentence quotes it in printable ASCII, cut."""
    quoted = parser_reason(httptools.HttpParserError(reason))
    assert quoted.isascii()
    assert quoted.isprintable()
    assert 0 < len(quoted) <= MAX_REASON_CHARS + 3
