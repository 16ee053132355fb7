"""The ``Idempotency-Key`` header: a retried submission (a batch, or one job with POST /api/jobs)
creates nothing twice.

A key is remembered in the KV bucket ``Names.idempotency_bucket`` (TTL ``idempotency_ttl_seconds``)
under a hash of (caller, key), so two callers never share a key and the key itself is never
stored. The record names what the key made (a batch or a job) and a fingerprint of what was
asked for:

- the same key with the same request resumes it (whatever of it is missing is published again
  under its derived ids) and answers the same ids;
- the same key with another request is refused (``422 IDEMPOTENCY_KEY_REUSED``);
- two requests racing with one key make one batch: the record is written with KV ``create``,
  which the server lets succeed once.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from jobrunner.contracts.names import Names
from jobrunner.services.api.errors import ApiError, try_again_later

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 200
_KEY = re.compile(rf"[\x20-\x7e]{{1,{MAX_KEY_CHARS}}}\Z")


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the batch id, or the job id
    fingerprint: str
    created_at: float  # unix time of the first request


class Claim(msgspec.Struct, frozen=True):
    id: str
    resumed: bool  # the key was seen before: what it made may be partly (or wholly) stored


def check_key(key: str) -> str:
    """``key`` when it can name a request; else 400 INVALID_IDEMPOTENCY_KEY saying what is wrong
    with it. An empty key (the HTTP server strips the spaces around a value, so a blank one too)
    is refused, not taken for no key: its sender meant retries to be safe, and they would not."""
    if _KEY.match(key):
        return key
    if not key.strip():
        why = (
            f"is empty; send a key (1 to {MAX_KEY_CHARS} printable ASCII characters) or leave "
            "the header out"
        )
    elif len(key) > MAX_KEY_CHARS:
        why = f"is {len(key)} characters long; a key may have at most {MAX_KEY_CHARS}"
    else:
        why = f"must be printable ASCII characters only (at most {MAX_KEY_CHARS})"
    raise ApiError(400, "INVALID_IDEMPOTENCY_KEY", f"The {HEADER} header {why}.", header=HEADER)


def record_key(principal: str, key: str) -> str:
    # KV keys allow few characters; a hash fits them all and keeps the key itself private.
    return hashlib.sha256(f"{principal}\n{key}".encode()).hexdigest()


class IdempotencyKeys:
    def __init__(self, js: JetStreamContext, names: Names) -> None:
        self._js = js
        self._names = names
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._names.idempotency_bucket)
        return self._kv

    async def claim(
        self, principal: str, key: str, fingerprint: str, new_id: str, kind: str = "batch"
    ) -> Claim:
        """What this key stands for: ``new_id`` if the key is new. ``kind`` (``batch`` or
        ``job``) names the id in the error of a key used for another request."""
        kv = await self.kv()
        rkey = record_key(principal, key)
        record = KeyRecord(id=new_id, fingerprint=fingerprint, created_at=time.time())
        for _ in range(3):
            try:
                await kv.create(rkey, msgspec.json.encode(record))
                return Claim(new_id, resumed=False)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(rkey)
            except KeyNotFoundError:
                continue  # expired between our create and our read: create again
            if not entry.value:
                continue
            try:
                stored = msgspec.json.decode(entry.value, type=KeyRecord)
            except msgspec.MsgspecError:
                # Not written by jobrunner (by hand, or corrupt): what it stood for is unknown,
                # so neither a new request nor a resumed one is safe under this key.
                raise ApiError(
                    409,
                    "IDEMPOTENCY_KEY_UNREADABLE",
                    f"What this {HEADER} was used for cannot be read; use a new key.",
                ) from None
            if stored.fingerprint != fingerprint:
                made: dict[str, Any] = {f"{kind}_id": stored.id}
                raise ApiError(
                    422,
                    "IDEMPOTENCY_KEY_REUSED",
                    f"This {HEADER} was used for a different request; use a new key for a new "
                    f"{kind}, or send exactly the same request to finish the first one.",
                    **made,
                )
            return Claim(stored.id, resumed=True)
        # No Retry-After (README's table): nothing was started, the request may be sent again
        # at once.
        raise try_again_later(
            "IDEMPOTENCY_UNAVAILABLE",
            f"The {HEADER} could not be recorded; send the request again.",
            retry_after=None,
        )
