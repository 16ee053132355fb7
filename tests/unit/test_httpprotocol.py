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


def test_uvicorn_still_answers_a_parser_error_through_send_400_response() -> None:
    """The hook: uvicorn's data_received calls send_400_response inside its ``except
    httptools.HttpParserError`` (where the parser's error is the one being handled). Should a
    new uvicorn rename or move it, malformed requests would get its plain text again."""
    handlers = [
        node
        for node in ast.walk(source_tree(HttpToolsProtocol.data_received))
        if isinstance(node, ast.ExceptHandler) and "HttpParserError" in ast.unparse(node.type)  # type: ignore[arg-type]
    ]
    assert handlers, "uvicorn's data_received no longer catches httptools.HttpParserError"
    calls = [ast.unparse(node) for node in ast.walk(handlers[0]) if isinstance(node, ast.Call)]
    assert any(call.startswith("self.send_400_response(") for call in calls), calls


def test_what_the_protocol_overrides_and_reads_is_uvicorns() -> None:
    """Each method ApiHttpProtocol overrides is one of uvicorn's (an override of a method
    uvicorn no longer has would never be called), and the cycle has what it reads."""
    overridden = {
        name
        for name, value in vars(ApiHttpProtocol).items()
        if callable(value) and not name.startswith("_")
    }
    assert overridden == {
        "data_received",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "send_400_response",
    }
    for name in overridden:
        assert callable(getattr(HttpToolsProtocol, name, None)), name
    assigned = {
        node.attr
        for node in ast.walk(source_tree(RequestResponseCycle.__init__))
        if isinstance(node, ast.Attribute)
    }
    assert {"response_started", "response_complete", "disconnected"} <= assigned


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
