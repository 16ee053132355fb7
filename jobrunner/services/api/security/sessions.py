"""Browser sessions: a signed, HttpOnly, SameSite=Strict cookie naming the token it came from.

The cookie is ``<token id>.<issued at>.<signature>``; the signature is an HMAC with a key kept in
the tokens bucket, so any API instance can check a cookie another one set. Nothing secret is in
the cookie, and revoking (or expiring) the token ends every session made from it at once.

Cross-site requests: SameSite=Strict keeps the cookie off requests started by other sites, and
every state-changing request authenticated by the cookie must also carry the CSRF token (header
``X-CSRF-Token`` or form field ``csrf_token``) and, when the browser sends one, a same-origin
``Origin``. The CSRF token is an HMAC of the session, so it needs no storage either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

COOKIE_NAME = "jobrunner_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SESSION_MAX_AGE = 12 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Session:
    token_id: str
    issued_at: int
    raw: str


class SessionSigner:
    def __init__(self, key: bytes, max_age: int = SESSION_MAX_AGE) -> None:
        self._key = key
        self.max_age = max_age

    def _sign(self, purpose: str, payload: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}:{payload}".encode(), hashlib.sha256).digest())

    def issue(self, token_id: str, now: float | None = None) -> str:
        payload = f"{token_id}.{int(now if now is not None else time.time())}"
        return f"{payload}.{self._sign('session', payload)}"

    def verify(self, cookie: str, now: float | None = None) -> Session | None:
        token_id, _, rest = cookie.partition(".")
        issued, _, signature = rest.partition(".")
        if not token_id or not issued.isdigit() or not signature:
            return None
        expected = self._sign("session", f"{token_id}.{issued}")
        if not _same(expected, signature):
            return None
        age = (now if now is not None else time.time()) - int(issued)
        if age < 0 or age > self.max_age:
            return None
        return Session(token_id=token_id, issued_at=int(issued), raw=cookie)

    def csrf_token(self, session_cookie: str) -> str:
        return self._sign("csrf", session_cookie)

    def check_csrf(self, session_cookie: str, presented: str | None) -> bool:
        return bool(presented) and _same(self.csrf_token(session_cookie), presented or "")


def _same(expected: str, presented: str) -> bool:
    """Constant-time comparison that also takes what a client sent in non-ASCII characters
    (``compare_digest`` raises TypeError on such a ``str``: an error page instead of a 401/403)."""
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogatepass"))
