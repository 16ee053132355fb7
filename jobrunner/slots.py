"""Slot locks as leases in a NATS KV bucket.

One key per lock slot (``slot.<lock>``), or per job for job types without a lock
(``job.<job_id>``), so every running job has a lease. A lease is written with a per-message TTL and
renewed while the job runs; each write is conditional on the revision we last wrote, so a runner
whose lease expired (and was taken over) can no longer act for that job: that is the fence.

The API *reserves* a slot (phase ``reserved``) before publishing a JobRequested for a type whose
busy policy is ``reject``; the runner that picks the job up turns the reservation into a held lease.
"""

from __future__ import annotations

import contextlib
import re
import socket
from typing import Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from contracts.names import Names

_KEY_SAFE = re.compile(r"[^-_A-Za-z0-9]")


class SlotValue(msgspec.Struct, kw_only=True):
    job_id: str
    phase: Literal["reserved", "held"]
    job_type: str = ""
    runner_id: str | None = None
    host: str | None = None
    pid: int | None = None
    pgid: int | None = None


class Lease(msgspec.Struct, kw_only=True):
    key: str
    revision: int
    value: SlotValue


def slot_key(lock: str | None, job_id: str) -> str:
    if lock:
        return "slot." + _KEY_SAFE.sub("_", lock)
    return "job." + _KEY_SAFE.sub("_", job_id)


class SlotTable:
    """The lock bucket, as the API and the runners use it."""

    def __init__(self, js: JetStreamContext, names: Names, ttl_seconds: float) -> None:
        self._js = js
        self._names = names
        self.ttl = max(1, round(ttl_seconds))
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._names.locks_bucket)
        return self._kv

    def _subject(self, key: str) -> str:
        return f"$KV.{self._names.locks_bucket}.{key}"

    async def _write(self, key: str, value: SlotValue, last: int) -> int:
        # kv.update() cannot set a TTL, so write the KV message ourselves: conditional on the
        # last revision (0 = must not exist) and with the lease TTL.
        try:
            ack = await self._js.publish(
                self._subject(key),
                msgspec.json.encode(value),
                headers={
                    "Nats-Expected-Last-Subject-Sequence": str(last),
                    "Nats-TTL": f"{self.ttl}s",
                },
            )
        except Exception as exc:
            if getattr(exc, "err_code", None) in (10071, 10164):
                raise KeyWrongLastSequenceError(description=str(exc)) from None
            raise
        return ack.seq

    async def current(self, key: str) -> Lease | None:
        kv = await self.kv()
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None or entry.operation is not None:
            return None
        return Lease(
            key=key,
            revision=entry.revision or 0,
            value=msgspec.json.decode(entry.value, type=SlotValue),
        )

    async def last_revision(self, key: str) -> int:
        """The revision a create must name: 0, or the tombstone's if the key was deleted."""
        kv = await self.kv()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError as exc:
            entry = getattr(exc, "entry", None)
            return entry.revision if entry is not None and entry.revision else 0
        except NotFoundError:
            return 0
        return entry.revision or 0

    async def try_acquire(self, key: str, value: SlotValue) -> Lease | None:
        """Take a free slot; ``None`` when someone holds or reserved it."""
        for _ in range(3):
            current = await self.current(key)
            if current is not None:
                if current.value.job_id == value.job_id:
                    return await self.renew(current, value)
                return None
            try:
                revision = await self._write(key, value, await self.last_revision(key))
            except KeyWrongLastSequenceError:
                continue  # someone wrote between our read and write: look again
            return Lease(key=key, revision=revision, value=value)
        return None

    async def renew(self, lease: Lease, value: SlotValue | None = None) -> Lease | None:
        """Extend a lease; ``None`` means it was lost (expired and taken, or released)."""
        new_value = value or lease.value
        try:
            revision = await self._write(lease.key, new_value, lease.revision)
        except KeyWrongLastSequenceError:
            return None
        return Lease(key=lease.key, revision=revision, value=new_value)

    async def release(self, lease: Lease) -> None:
        kv = await self.kv()
        # Already expired or taken: nothing of ours to release.
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.delete(lease.key, last=lease.revision)


def hostname() -> str:
    return socket.gethostname()
