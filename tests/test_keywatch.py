"""A watch of some of a bucket's keys hands over what nats-py's watch of every key does for those
keys, in the same order, and nothing of the others: on this suite's nats-server and on the oldest
one jobrunner supports (several filters on one consumer need the server's ``filter_subjects``)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.kv import KeyValue

from jobrunner.common.keywatch import watch_keys
from jobrunner.embedded.nats import EmbeddedNats
from tests import oldnats

pytestmark = pytest.mark.timeout(120)

WATCHED = ("slot.>", "queue.>")
Seen = tuple[str, bytes | None, int | None, str | None]


@pytest.fixture(params=["suite", "oldest"])
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The suite's nats-server, or the oldest supported (tests/oldnats.py)."""
    if request.param == "suite":
        yield request.getfixturevalue("nats_server_url")
        return
    path = oldnats.binary(oldnats.OLDEST)
    if not path.exists():
        message = f"no nats-server {oldnats.OLDEST} at {path}: `python -m tests.oldnats`"
        if oldnats.required():
            pytest.fail(message)
        pytest.skip(message)
    server = EmbeddedNats(tmp_path / "nats", binary=str(path))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def bucket(server_url: str) -> AsyncIterator[KeyValue]:
    """A bucket like the lock bucket: one value a key, per-message TTLs leaving markers."""
    nc = await nats.connect(server_url)
    js = nc.jetstream()
    name = f"w{uuid.uuid4().hex[:10]}"
    kv = await js.create_key_value(bucket=name, history=1, limit_marker_ttl=60.0)
    try:
        yield kv
    finally:
        await js.delete_key_value(name)
        await nc.close()


async def until_none(watcher: KeyValue.KeyWatcher, seen: list[Seen]) -> None:
    """The entries up to the watch's ``None`` (the current state delivered)."""
    while (entry := await watcher.updates(timeout=30)) is not None:  # type: ignore[no-untyped-call]
        seen.append((entry.key, entry.value, entry.revision, entry.operation))


async def until_key(
    watcher: KeyValue.KeyWatcher, seen: list[Seen], key: str, op: str | None
) -> None:
    while not any(s[0] == key and s[3] == op for s in seen):
        entry = await watcher.updates(timeout=30)  # type: ignore[no-untyped-call]
        assert entry is not None, "a second None"
        seen.append((entry.key, entry.value, entry.revision, entry.operation))


def watched(seen: list[Seen]) -> list[Seen]:
    return [s for s in seen if s[0].startswith(("slot.", "queue."))]


async def put_expiring(kv: KeyValue, key: str, value: bytes, ttl: str) -> None:
    """A put with its own TTL, as a lease is written (``SlotTable._write``)."""
    await kv._js.publish(kv._pre + key, value, headers={"Nats-TTL": ttl})


@dataclasses.dataclass
class Watches:
    """nats-py's watch of every key and ``watch_keys``' of the ``WATCHED`` ones, each with what
    it has handed over so far."""

    every: KeyValue.KeyWatcher
    all_seen: list[Seen]
    some: KeyValue.KeyWatcher
    some_seen: list[Seen]


@asynccontextmanager
async def both_watches(kv: KeyValue) -> AsyncIterator[Watches]:
    """Both watches of ``kv``, each read up to the ``None`` after the current state; stopped at
    the end."""
    watches = Watches(await kv.watchall(), [], await watch_keys(kv, WATCHED), [])
    try:
        await until_none(watches.every, watches.all_seen)
        await until_none(watches.some, watches.some_seen)
        yield watches
    finally:
        await watches.every.stop()  # type: ignore[no-untyped-call]
        await watches.some.stop()  # type: ignore[no-untyped-call]


async def test_a_key_watch_hands_over_what_a_watch_of_every_key_does_for_its_keys(
    bucket: KeyValue,
) -> None:
    """The current state (each key's last value, deletes too), the ``None`` after it, then every
    put, delete and purge, in the same order and revisions as nats-py's watch of every
    key gives them; of the keys not watched (``run.``), nothing."""
    kv = bucket
    await kv.put("slot.a", b"1")
    await kv.put("run.j1", b"record")
    await kv.put("slot.a", b"2")
    await kv.put("queue.a.j1", b"q")
    await kv.put("slot.b", b"1")
    await kv.delete("slot.b")
    await kv.put("run.j2", b"record")
    async with both_watches(kv) as w:
        assert w.some_seen == watched(w.all_seen)
        assert [s[0] for s in w.some_seen] == ["slot.a", "queue.a.j1", "slot.b"]
        await kv.put("run.j3", b"record")
        await kv.put("queue.a.j2", b"q")
        await kv.delete("run.j3")
        await kv.delete("queue.a.j1")
        await kv.purge("slot.a")
        # A last put: delivered in stream order, so after anything else either would hand over.
        await kv.put("slot.end", b"")
        await until_key(w.every, w.all_seen, "slot.end", None)
        await until_key(w.some, w.some_seen, "slot.end", None)
        assert w.some_seen == watched(w.all_seen)
        assert not [s for s in w.some_seen if s[0].startswith("run.")]
        assert (await w.some._sub.consumer_info()).delivered.consumer_seq == len(w.some_seen)


async def test_a_key_watch_of_keys_with_no_value_yet_says_so_at_once(bucket: KeyValue) -> None:
    """Nothing stored under its keys (other keys are): the watch's first update is ``None``."""
    await bucket.put("run.j1", b"record")
    watcher = await watch_keys(bucket, WATCHED)
    try:
        assert await watcher.updates(timeout=30) is None  # type: ignore[no-untyped-call]
        await bucket.put("queue.a.j1", b"q")
        entry = await watcher.updates(timeout=30)  # type: ignore[no-untyped-call]
        assert (entry.key, entry.value, entry.operation) == ("queue.a.j1", b"q", None)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]


async def test_a_key_watch_hands_over_the_marker_of_an_expired_value(bucket: KeyValue) -> None:
    """A lease whose TTL ran out comes as a purge (the server's marker), as in nats-py's watch;
    an expired value of a key not watched does not come at all."""
    kv = bucket
    async with both_watches(kv) as w:
        await put_expiring(kv, "slot.c", b"lease", "1s")
        await put_expiring(kv, "run.j4", b"record", "1s")
        await until_key(w.every, w.all_seen, "slot.c", "PURGE")
        await until_key(w.every, w.all_seen, "run.j4", "PURGE")
        await kv.put("slot.end", b"")
        await until_key(w.every, w.all_seen, "slot.end", None)
        await until_key(w.some, w.some_seen, "slot.end", None)
        assert w.some_seen == watched(w.all_seen)
        assert [s[0] for s in w.some_seen] == ["slot.c", "slot.c", "slot.end"]


async def test_a_key_watch_cancelled_as_it_subscribes_leaves_no_subscription(
    bucket: KeyValue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel right after the subscription is made (a start step's timeout, a runner
    stopping while its board reopens the watch) unsubscribes it: no consumer and no callback
    left waiting for a set-up that never comes."""
    js = bucket._js
    nc = js._nc
    subscribe = js.subscribe
    made: list[Any] = []

    async def subscribe_then_cancelled(*args: Any, **kwargs: Any) -> Any:
        sub = await subscribe(*args, **kwargs)
        made.append(sub)
        current = asyncio.current_task()
        assert current is not None
        current.cancel()  # lands at the caller's next await
        return sub

    before = len(nc._subs)
    monkeypatch.setattr(js, "subscribe", subscribe_then_cancelled)
    with pytest.raises(asyncio.CancelledError):
        await watch_keys(bucket, ["slot.>"])
    assert made, "the watch never subscribed"
    assert len(nc._subs) == before, "subscription left behind"
