"""API tokens: a name, a role, an optional expiry and scope; only a hash is ever stored.

A token looks like ``jrt_<id>_<secret>``. The id finds the record; the SHA-256 of the whole token is
compared with the stored hash in constant time. The secret has 256 bits of entropy, so a fast hash
is enough (a slow password hash protects low-entropy secrets, which these are not).

Records live in the NATS KV bucket ``Names.tokens_bucket``, not in Postgres (the projector is the
only writer there), so every API instance sees every token: each keeps an in-memory copy fed by a
KV watch, and asks the bucket directly for an id it has not seen yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum

import msgspec
import structlog
from nats.js import JetStreamContext, api
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from jobrunner.common import keywatch, retry, subscription
from jobrunner.contracts.names import Names

log = structlog.get_logger()

TOKEN_PREFIX = "jrt_"
# \Z, not $: "$" also matches before a final line break.
_TOKEN_RE = re.compile(r"^jrt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
_TOKEN_ID_RE = re.compile(r"^[0-9a-f]{16}\Z")
_SESSION_KEY = "session-key"
# Written to learn the server's time now (``_server_now``); its value is never read.
_CLOCK_KEY = "clock"
# A name claim with no token record behind it is taken over once it is this old: twice nats-py's
# JetStream request timeout (5 s), past which the create that made it has given up. A module
# value so that tests can shorten it.
NAME_CLAIM_STALE_SECONDS = 10.0
# The records' keys in the bucket (its other keys: the session key, the clock, name claims).
TOKEN_KEYS = ("token.>",)
# How long a listing waits for the watch's next record: nats-py's request timeout (a NATS that
# does not deliver fails the listing, its watch ended, rather than holding it).
ALL_ENTRY_SECONDS = 5.0


class Role(StrEnum):
    """What a token may do. Each role includes everything the roles before it may do."""

    VIEWER = "viewer"  # read jobs, job types, logs, streams
    OPERATOR = "operator"  # also start and cancel jobs
    ADMIN = "admin"  # also create, list and revoke tokens

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def includes(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANKS = {Role.VIEWER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}


class TokenRecord(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    name: str
    role: Role
    hash: str
    created_at: datetime
    expires_at: datetime | None = None
    own_jobs_only: bool = False
    created_by: str | None = None
    revoked_at: datetime | None = None

    def usable(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


class TokenError(Exception):
    """A token operation a person asked for cannot be done; the message says why."""


class TokenNameTaken(TokenError):
    """Names are never reused (they identify who did what in the events)."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh ``(id, token)``."""
    token_id = secrets.token_hex(8)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def token_id_of(token: str) -> str | None:
    match = _TOKEN_RE.match(token)
    return match.group(1) if match else None


def _wrong_last_sequence(exc: BaseException) -> bool:
    """A conditional write refused because the key moved on (older servers answer it with a
    plain API error)."""
    return isinstance(exc, KeyWrongLastSequenceError) or "wrong last sequence" in str(exc).lower()


def _key(token_id: str) -> str:
    return f"token.{token_id}"


def _name_key(name: str) -> str:
    """The key claiming a token name (a name may hold "@", which a key may not)."""
    return f"name.{hashlib.sha256(name.encode()).hexdigest()}"


async def open_bucket(
    js: JetStreamContext,
    names: Names,
    replicas: int = 1,
    starting: JetStreamContext | None = None,
) -> KeyValue:
    """The token bucket, created when missing. Several API instances may create it at once:
    creating it with the same configuration as another is no error. JetStream's own errors
    (a cluster still forming, a timeout) are raised for the caller to retry. ``starting``: the
    context for the look and the create, a start's (``retry.start_context``: a short timeout,
    for a caller that tries again); the bucket returned uses ``js``."""
    starting = starting or js
    bucket, stream = names.tokens_bucket, f"KV_{names.tokens_bucket}"
    try:
        info = await starting.stream_info(stream)
    except NotFoundError:
        await starting.create_key_value(
            bucket=bucket,
            history=5,
            storage=api.StorageType.FILE,
            replicas=replicas,
        )
        info = await starting.stream_info(stream)
    # What nats-py's ``js.key_value`` makes of the stream, with ``js``.
    direct = bool(info.config.allow_direct)
    return KeyValue(name=bucket, stream=stream, pre=f"$KV.{bucket}.", js=js, direct=direct)


def utc_now() -> datetime:
    return datetime.now(UTC)


class TokenStore:
    """Tokens in the KV bucket, with an in-memory copy kept current by a watch. ``clock`` is
    this host's time (a token's creation, expiry and revocation; tests set it apart)."""

    def __init__(self, kv: KeyValue, clock: Callable[[], datetime] = utc_now) -> None:
        self.kv = kv
        self._clock = clock
        self._cache: dict[str, TokenRecord] = {}
        self._watch_task: asyncio.Task[None] | None = None
        # Set (and dropped) when a token's record changes: what an open stream waits on.
        self._changed: dict[str, asyncio.Event] = {}

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        names: Names,
        replicas: int = 1,
        starting: JetStreamContext | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> TokenStore:
        return cls(await open_bucket(js, names, replicas, starting), clock)

    # --- the watch (API instances)
    async def start_watch(self) -> None:
        """Load every record and keep them current; returns once the initial load is done.

        Its consumer is created on the start's context (a create of an ephemeral consumer: one
        made after its try gave up has no subscriber and is the server's to remove, after its
        inactive threshold, nats-py's KV watch default of 5 minutes); the watch then goes on on
        the bucket's own (its consumer's later re-creations). Cut short (the start's try timed
        out, a stop), its consumer and subscription go with it (``keywatch``)."""
        watcher = await keywatch.watch_keys(retry.start_bucket(self.kv), TOKEN_KEYS)
        loaded = asyncio.get_running_loop().create_future()
        self._watch_task = asyncio.create_task(self._follow(watcher, loaded), name="token-watch")
        self._watcher = watcher
        try:
            async with asyncio.timeout(10):
                await loaded
        except BaseException:
            await self.stop_watch()  # started again by a retry: never two watches
            raise
        assert watcher._sub is not None  # set by ``watch``
        subscription.keep_on(watcher._sub, self.kv._js)

    async def _follow(self, watcher: keywatch.Watch, loaded: asyncio.Future[None]) -> None:
        """Keep the copy of the records current from ``watcher``, ``loaded`` once its current
        state is read. A watch that lost messages in nats-py (``keywatch.WatchLostMessages``)
        is made again, its current state read afresh (a record deleted meanwhile comes as its
        delete's marker); so is one whose new watch could not be made (NATS away), a second
        later."""
        while True:
            try:
                async for entry in watcher:
                    if entry is None:
                        if not loaded.done():
                            loaded.set_result(None)
                        continue
                    self._follow_entry(entry)
                return
            except keywatch.WatchLostMessages:
                await keywatch.end_watch(watcher)
            while True:
                try:
                    watcher = self._watcher = await keywatch.watch_keys(self.kv, TOKEN_KEYS)
                    break
                except Exception as exc:
                    log.warning("token watch not made again yet", error=repr(exc))
                    await asyncio.sleep(1.0)

    def _follow_entry(self, entry: KeyValue.Entry) -> None:
        token_id = entry.key.removeprefix("token.")
        if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
            self._remember(token_id, None)
            return
        try:
            self._remember(token_id, msgspec.json.decode(entry.value, type=TokenRecord))
        except msgspec.MsgspecError:
            # What replaced the record is unreadable: the token it described must not go on
            # opening the API from the copy kept here.
            self._remember(token_id, None)

    async def stop_watch(self) -> None:
        """End the watch, within ``keywatch.END_SECONDS`` (NATS frozen or away at a stop)."""
        if self._watch_task is not None:
            task, self._watch_task = self._watch_task, None
            task.cancel()
            await keywatch.end_watch(self._watcher)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # waits on the watch's queue alone: ends on its cancel

    # --- reading
    async def get(self, token_id: str) -> TokenRecord | None:
        try:
            entry = await self.kv.get(_key(token_id))
        except KeyNotFoundError:
            return None
        return self._read(token_id, entry.value)

    def _read(self, token_id: str, value: bytes | None) -> TokenRecord | None:
        """The record stored as ``value`` (None: deleted or unreadable), remembered."""
        if not value:
            return None
        try:
            record = msgspec.json.decode(value, type=TokenRecord)
        except msgspec.MsgspecError:
            # Not written by jobrunner (by hand, or corrupt): no token stands behind it, so it
            # opens nothing, as the watch's cache already treats it.
            log.warning("token_record_unreadable", token_id=token_id)
            return None
        self._remember(token_id, record)
        return record

    async def all(self) -> list[TokenRecord]:
        """Every record, revoked ones included, oldest first (read from the bucket). A watch of
        the records read through, not nats-py's ``kv.keys()``: that one left its consumer and
        its subscription behind when a listing was cancelled midway (a request's timeout, a
        stop); this watch ends on every path (``keywatch.watching``)."""
        records: list[TokenRecord] = []
        for entry in await keywatch.current_entries(self.kv, TOKEN_KEYS, ALL_ENTRY_SECONDS):
            if entry.operation is None:
                token_id = entry.key.removeprefix("token.")
                if (record := self._read(token_id, entry.value)) is not None:
                    records.append(record)
        return sorted(records, key=lambda r: r.created_at)

    async def find(self, id_or_name: str) -> TokenRecord | None:
        for record in await self.all():
            if id_or_name in (record.id, record.name):
                return record
        return None

    async def authenticate(self, token: str, now: datetime | None = None) -> TokenRecord | None:
        """The usable record this token belongs to, else ``None``."""
        token_id = token_id_of(token)
        if token_id is None:
            return None
        record = self._cache.get(token_id) or await self.get(token_id)
        if record is None:
            return None
        if not hmac.compare_digest(hash_token(token), record.hash):
            return None
        return record if record.usable(now or self._clock()) else None

    async def usable_record(self, token_id: str) -> TokenRecord | None:
        """A still usable record by id (a session cookie names its token by id)."""
        record = self._cache.get(token_id) or await self.get(token_id)
        return record if record is not None and record.usable(self._clock()) else None

    async def until_unusable(self, token_id: str) -> None:
        """Returns once the token stops counting: revoked (here or, through the watch, anywhere),
        its record gone or unreadable, or past its expiry. An open event stream waits on this,
        so that it does not outlive its token."""
        while True:
            record = self._cache.get(token_id)
            now = self._clock()
            if record is None or not record.usable(now):
                return
            changed = self._changed.setdefault(token_id, asyncio.Event())
            left = None if record.expires_at is None else (record.expires_at - now).total_seconds()
            # A timeout around the wait, not wait_for: no task of its own for each open stream.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await changed.wait()

    def _remember(self, token_id: str, record: TokenRecord | None) -> None:
        """The copy kept here of a token's record (None: it opens nothing); wakes its streams if
        it changed. Every listing of the tokens reads each record again, mostly unchanged: waking
        every open stream for each listing cost 13-30 ms of loop time at 1,000 streams."""
        if self._cache.get(token_id) == record:
            return
        if record is None:
            self._cache.pop(token_id, None)
        else:
            self._cache[token_id] = record
        changed = self._changed.pop(token_id, None)
        if changed is not None:
            changed.set()

    # --- writing
    async def create(
        self,
        name: str,
        role: Role | str,
        *,
        expires_at: datetime | None = None,
        own_jobs_only: bool = False,
        created_by: str | None = None,
    ) -> tuple[TokenRecord, str]:
        """Create a token; returns its record and the token itself (shown once, never stored)."""
        if not NAME_RE.match(name):
            raise TokenError(
                "a token name is 1-64 characters: letters, digits and _ . @ -, "
                "starting with a letter or digit"
            )
        try:
            role = Role(role)
        except ValueError:
            raise TokenError(f"role must be one of {', '.join(r.value for r in Role)}") from None
        if expires_at is not None and expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at is not None and expires_at <= self._clock():
            raise TokenError("the expiry lies in the past")
        # Names are the identity recorded in every job's events, so a name is never reused,
        # not even after its token was revoked: the audit trail stays unambiguous.
        taken = TokenNameTaken(f"a token named {name!r} exists or existed; choose another name")
        if any(r.name == name for r in await self.all()):
            raise taken
        token_id, token = new_token()
        # The list above cannot see a token being created at this moment (another admin, another
        # API instance): the name is claimed in the bucket first, which only one claim passes.
        # Tokens made before the claims existed have none: the list above finds those.
        try:
            await self.kv.create(_name_key(name), token_id.encode())
        except Exception as exc:
            if not _wrong_last_sequence(exc):
                raise
            await self._take_over_claim(name, token_id, taken)
        record = TokenRecord(
            id=token_id,
            name=name,
            role=role,
            hash=hash_token(token),
            created_at=self._clock(),
            expires_at=expires_at,
            own_jobs_only=own_jobs_only,
            created_by=created_by,
        )
        try:
            await self.kv.create(_key(token_id), msgspec.json.encode(record))
        except BaseException:
            # No token came of the claim: give it back, so that the request sent again finds
            # the name free. If that fails too (NATS unreachable), a later create takes the
            # claim over once it is old enough (_take_over_claim).
            try:
                await self.kv.delete(_name_key(name))
            except Exception as exc:
                log.warning("token name claim not given back", name=name, error=repr(exc))
            raise
        self._remember(token_id, record)
        log.info("token created", token_id=token_id, name=name, role=role.value)
        return record, token

    async def _take_over_claim(self, name: str, token_id: str, taken: TokenNameTaken) -> None:
        """The name is claimed already: raises ``taken`` unless the claim was left behind.

        A claim is left without its token when the API dies between the claim and the record,
        or NATS stops answering there (the claim's own write may even time out here and still
        be applied once NATS is back). Such a claim names a token id with no record; once it is
        older than any create still under way could be (NAME_CLAIM_STALE_SECONDS), this create
        takes it over. Its age is measured between two of the server's own timestamps, the
        claim's and a probe's written now (``_server_now``): with this host's clock, a host
        whose clock ran ahead of the server's took a fresh claim for a stale one (two tokens of
        one name), one behind kept a stale claim blocking the name longer. The update is
        conditional on the claim's revision, so of several creates taking it over at once one
        wins; the rest get 409."""
        key = _name_key(name)
        try:
            claim = await self.kv._js.get_msg(
                self.kv._stream, subject=f"{self.kv._pre}{key}", direct=self.kv._direct
            )
        except NotFoundError:
            raise taken from None  # given back a moment ago: the client may send it again
        if claim.headers and claim.headers.get(KV_OP) in (KV_DEL, KV_PURGE):
            raise taken  # deleted after our create was refused: likewise
        held_by = (claim.data or b"").decode(errors="replace")
        assert claim.time is not None
        assert claim.seq is not None
        # Measured before the record is looked for, never after: a NATS pause between the two
        # would make a claim whose record landed during the pause look old.
        age = (await self._server_now() - claim.time).total_seconds()
        if _TOKEN_ID_RE.match(held_by) and await self._exists(held_by):
            raise taken
        if age < NAME_CLAIM_STALE_SECONDS:
            raise taken  # perhaps a create still under way: its record may yet come
        try:
            await self.kv.update(key, token_id.encode(), last=claim.seq)
        except Exception as exc:
            if _wrong_last_sequence(exc):
                raise taken from None
            raise
        log.warning(
            "token name claim left without its token taken over",
            name=name,
            left_by=held_by,
            age_seconds=round(age, 1),
        )

    async def _server_now(self) -> datetime:
        """The server's time now: the timestamp it gives a probe written to the bucket (its
        ``clock`` key, the bucket's history deep). In a cluster the stream's leader stamps
        messages, so a leader change between a claim and the probe mixes two servers' clocks:
        NTP keeps those well within NAME_CLAIM_STALE_SECONDS, an API host's clock need not."""
        seq = await self.kv.put(_CLOCK_KEY, b"")
        probe = await self.kv._js.get_msg(self.kv._stream, seq=seq, direct=self.kv._direct)
        assert probe.time is not None
        return probe.time

    async def _exists(self, token_id: str) -> bool:
        """Whether a record (usable or not, readable or not) stands under this id."""
        try:
            entry = await self.kv.get(_key(token_id))
        except KeyNotFoundError:
            return False
        return bool(entry.value)

    async def revoke(self, id_or_name: str) -> TokenRecord:
        # An id is read by its own key first (one request, not a listing of every record); a
        # name needs the listing. (A listing once missed a record another had just found, the
        # fuzzer's DELETE answered 500: the watch ended on the server's pending count, fixed in
        # ``keywatch``.)
        by_id = await self.get(id_or_name) if _TOKEN_ID_RE.match(id_or_name) else None
        record = by_id or await self.find(id_or_name)
        if record is None:
            raise TokenError(f"there is no token {id_or_name!r}")
        if record.revoked_at is not None:
            return record
        revoked = msgspec.structs.replace(record, revoked_at=self._clock())
        await self.kv.put(_key(record.id), msgspec.json.encode(revoked))
        self._remember(record.id, revoked)
        log.info("token revoked", token_id=record.id, name=record.name)
        return revoked

    async def session_key(self) -> bytes:
        """The key that signs session cookies, created once and shared by every API instance.
        A start step, on the start's context: the create sent again after its first try stored
        it is refused as not the first revision, and the key read is the one stored."""
        kv = retry.start_bucket(self.kv)
        try:
            # Created only if absent (revision 0): every instance then reads the one key.
            await kv.update(_SESSION_KEY, secrets.token_bytes(32), last=0)
        except Exception as exc:
            if not _wrong_last_sequence(exc):
                raise
        try:
            entry = await kv.get(_SESSION_KEY)
        except KeyNotFoundError:
            # It exists (the create was refused), but the replica that answered the read has
            # not caught up yet (a node restarting in a cluster): not yet, rather than never.
            raise TimeoutError("the session key is not readable yet") from None
        assert entry.value is not None
        return bytes(entry.value)
