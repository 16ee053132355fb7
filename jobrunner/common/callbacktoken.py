"""Callback tokens of external jobs: minted when the job is requested, shown once, kept as a hash.

A token is 32 random bytes (256 bits), so a plain SHA-256 is enough to keep it: nobody can guess
one from its hash, and no slow hash is needed against a dictionary. It opens one job's reporting
endpoint and nothing else: it is no API token (the token store never sees it).

The job endpoint mints a random token (``mint``). A batch whose submission may be retried
(``Idempotency-Key``) re-publishes the same job ids, and JetStream keeps the first JobRequested of
each: a token minted again would not match the stored hash. Such a caller derives each job's token
from an installation secret and the job id instead (``derive``), so every retry answers the same
tokens and still nothing but their hashes is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

TOKEN_BYTES = 32
# What a hash is compared with when there is no job to compare with: the answer takes as long
# and says as little whether the job exists or not.
_NO_HASH = "0" * 64


@dataclass(frozen=True)
class CallbackToken:
    token: str  # shown once, to whoever requested the job
    token_hash: str  # what JobRequested.callback_token_hash stores


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def mint() -> CallbackToken:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return CallbackToken(token=token, token_hash=hash_token(token))


def derive(secret: bytes, job_id: str) -> CallbackToken:
    """The token of ``job_id`` under ``secret`` (at least 32 bytes, kept by the installation):
    the same every time, and as unguessable as a random one to whoever lacks the secret."""
    if len(secret) < TOKEN_BYTES:
        raise ValueError(f"a callback secret needs at least {TOKEN_BYTES} bytes")
    digest = hmac.new(secret, b"jobrunner-callback-token:" + job_id.encode(), "sha256").digest()
    token = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return CallbackToken(token=token, token_hash=hash_token(token))


def matches(token: str, stored_hash: str | None) -> bool:
    """Whether ``token`` is the one whose hash is stored, compared in constant time."""
    expected = stored_hash or _NO_HASH
    return hmac.compare_digest(hash_token(token), expected) and stored_hash is not None


def callback_path(job_id: str) -> str:
    return f"/api/external/jobs/{job_id}"
