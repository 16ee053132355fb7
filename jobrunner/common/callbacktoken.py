"""Callback tokens of external jobs: minted when the job is requested, shown once, kept as a hash.

A token is 32 random bytes (256 bits), so a plain SHA-256 is enough to keep it: nobody can guess
one from its hash, and no slow hash is needed against a dictionary. It opens one job's reporting
endpoint and nothing else: it is no API token (the token store never sees it).

The job endpoint and the batch endpoint mint tokens the same way, through ``mint``.
"""

from __future__ import annotations

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


def matches(token: str, stored_hash: str | None) -> bool:
    """Whether ``token`` is the one whose hash is stored, compared in constant time."""
    expected = stored_hash or _NO_HASH
    return hmac.compare_digest(hash_token(token), expected) and stored_hash is not None


def callback_path(job_id: str) -> str:
    return f"/api/external/jobs/{job_id}"
