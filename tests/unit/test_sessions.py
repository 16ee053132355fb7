"""Browser sessions: signed cookies and CSRF tokens that need no storage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobrunner.services.api.security.sessions import SessionSigner

KEY = b"k" * 32
NOW = 1_769_860_800


def signer(max_age: int = 3600) -> SessionSigner:
    return SessionSigner(KEY, max_age=max_age)


def test_issued_cookie_is_accepted() -> None:
    """A cookie this API issued names the token it came from."""
    cookie = signer().issue("abc123", now=NOW)
    session = signer().verify(cookie, now=NOW + 5)
    assert session is not None
    assert (session.token_id, session.issued_at) == ("abc123", NOW)


def test_cookie_signed_with_another_key_is_refused() -> None:
    """A cookie signed by another installation is not a session here."""
    cookie = SessionSigner(b"x" * 32).issue("abc123", now=NOW)
    assert signer().verify(cookie, now=NOW) is None


def test_edited_cookie_is_refused() -> None:
    """Changing the token id or the time in a cookie breaks its signature."""
    cookie = signer().issue("abc123", now=NOW)
    token_id, issued, signature = cookie.split(".")
    assert signer().verify(f"other.{issued}.{signature}", now=NOW) is None
    assert signer().verify(f"{token_id}.{NOW + 100}.{signature}", now=NOW + 100) is None


@pytest.mark.parametrize(("age", "valid"), [(3599, True), (3600, True), (3601, False), (-1, False)])
def test_session_lasts_max_age(age: int, valid: bool) -> None:
    """A session is good for max_age seconds after it was issued, and not before it."""
    cookie = signer(max_age=3600).issue("abc123", now=NOW)
    assert (signer(max_age=3600).verify(cookie, now=NOW + age) is not None) is valid


@pytest.mark.parametrize("cookie", ["", ".", "abc..x", "abc.x1.sig", "abc.1000.é", "é.1.ü"])
def test_malformed_cookie_is_no_session(cookie: str) -> None:
    """A cookie of the wrong shape, or with characters a browser would not send, is no session."""
    assert signer().verify(cookie, now=NOW) is None


def test_csrf_token_belongs_to_its_session() -> None:
    """The CSRF token of one session is accepted for it and refused for another."""
    first, second = signer().issue("a", now=NOW), signer().issue("b", now=NOW)
    token = signer().csrf_token(first)
    assert signer().check_csrf(first, token)
    assert not signer().check_csrf(second, token)


@pytest.mark.parametrize("presented", [None, "", "é", "\ud800", "x" * 500])
def test_missing_or_foreign_csrf_token_is_refused(presented: str | None) -> None:
    """No token, an empty one or one with non-ASCII characters is refused, not an error."""
    assert not signer().check_csrf(signer().issue("a", now=NOW), presented)


@settings(deadline=None)
@given(st.text(max_size=80), st.none() | st.text(max_size=80))
def test_any_cookie_and_csrf_header_are_answered(cookie: str, presented: str | None) -> None:
    """Whatever a client sends as cookie and CSRF header, the answer is yes or no, not an error."""
    assert signer().verify(cookie, now=NOW) is None
    assert signer().check_csrf(cookie, presented) in (True, False)
