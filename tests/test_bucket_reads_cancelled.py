"""A read of a bucket's keys cancelled midway (a request's timeout, a service's stop) leaves
nothing behind: no consumer on the bucket's stream, no subscription on the client. The token
listing (``GET /api/tokens``), the token watch's start (the API's) and the running jobs' records
(the runner's sweep) read through a watch of the keys; nats-py's ``kv.keys()`` and ``kv.watch()``
left an ordered consumer on the server (for its 5 minutes of inactivity) and a subscription on
the client (for ever) for each read cut off, and the consumer of every read that ended well."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from jobrunner.common import keywatch
from jobrunner.common.slots import RunRecord, SlotTable, run_key
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api.security.tokens import Role, TokenStore
from tests.freeze import frozen

pytestmark = pytest.mark.timeout(180)

RECORDS = 40  # enough that a read takes many turns of the loop: cancels land midway
CANCELS = 60  # reads cut off, each after one more turn of the loop than the one before
SETTLED_SECONDS = 10.0  # what the server takes at most to delete the consumers left


@dataclass
class Bucket:
    nc: Client
    js: JetStreamContext
    stream: str
    read: Callable[[], Awaitable[int]]  # one read: how many records it found


async def consumers_and_subscriptions(bucket: Bucket) -> tuple[int, int]:
    info = await bucket.js.stream_info(bucket.stream)
    return info.state.consumer_count, len(bucket.nc._subs)


async def until_back_to(bucket: Bucket, before: tuple[int, int]) -> tuple[int, int]:
    """The counts once they are back to ``before``, or as they are after ``SETTLED_SECONDS``
    (deletions go on in the background: polled, not slept on)."""
    deadline = time.monotonic() + SETTLED_SECONDS
    while (now := await consumers_and_subscriptions(bucket)) != before:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    return now


@contextlib.asynccontextmanager
async def token_bucket(url: str, what: str) -> AsyncIterator[Bucket]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        store = await TokenStore.open(js, Names(f"t{uuid.uuid4().hex[:8]}"))
        for n in range(RECORDS):
            await store.create(f"token-{n}", Role.VIEWER)

        async def listing() -> int:
            return len(await store.all())

        async def watch_start() -> int:
            try:
                await store.start_watch()
                return len(store._cache)
            finally:
                await store.stop_watch()

        read = listing if what == "token listing" else watch_start
        yield Bucket(nc, js, store.kv._stream, read)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def lock_bucket(url: str) -> AsyncIterator[Bucket]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        names = Names(f"t{uuid.uuid4().hex[:8]}")
        kv = await js.create_key_value(bucket=names.locks_bucket, history=1)
        for n in range(RECORDS):
            record = RunRecord(job_id=f"job-{n}", slot_key=f"job.job-{n}", runner_id="r")
            await kv.put(run_key(record.job_id), msgspec.json.encode(record))
        await kv.delete(run_key("job-0"))  # a delete marker: no running job's record
        slots = SlotTable(js, names, 3.0)

        async def run_records() -> int:
            return len(await slots.run_records())

        yield Bucket(nc, js, f"KV_{names.locks_bucket}", run_records)
    finally:
        await nc.close()


READS = ["token listing", "token watch start", "running jobs' records"]


def bucket_for(url: str, what: str) -> contextlib.AbstractAsyncContextManager[Bucket]:
    return lock_bucket(url) if what == "running jobs' records" else token_bucket(url, what)


@pytest.mark.parametrize("what", READS)
async def test_a_read_cancelled_midway_leaves_no_consumer_and_no_subscription(
    own_nats: EmbeddedNats, what: str
) -> None:
    """Cancelled at every point of its read, again and again, a read of a bucket leaves the
    server with the consumers it had and the client with the subscriptions it had; read through,
    it finds every record."""
    async with bucket_for(own_nats.url, what) as bucket:
        before = await consumers_and_subscriptions(bucket)
        cut = 0
        for turns in range(CANCELS):
            read = asyncio.ensure_future(bucket.read())
            for _ in range(turns):
                await asyncio.sleep(0)
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
            cut += read.cancelled()
        assert cut >= CANCELS // 6, f"only {cut} reads were cut off midway"
        assert await until_back_to(bucket, before) == before
        found = await bucket.read()
        assert found == (RECORDS - 1 if what == "running jobs' records" else RECORDS)
        assert await until_back_to(bucket, before) == before


@pytest.mark.parametrize("what", READS)
async def test_a_read_cut_off_while_nats_is_frozen_ends_within_its_bound_and_leaves_nothing(
    own_nats: EmbeddedNats, what: str
) -> None:
    """NATS frozen midway through a read, the read's caller gives up (its timeout, a stop): the
    read ends within its watch's end bound (it does not wait on the frozen server for its
    UNSUB), and once NATS is back nothing it made is left on either side."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    async with bucket_for(own_nats.url, what) as bucket:
        before = await consumers_and_subscriptions(bucket)
        sent = 1
        while True:
            base = bucket.nc.stats["out_msgs"]
            read = asyncio.ensure_future(bucket.read())
            # The client counts its sends; nothing to wait on but the count itself.
            while bucket.nc.stats["out_msgs"] < base + sent and not read.done():  # noqa: ASYNC110
                await asyncio.sleep(0)
            if read.done():
                read.result()  # a read that finished before the freeze must have worked
                break
            with frozen(pid):
                read.cancel()
                done, _ = await asyncio.wait({read}, timeout=keywatch.END_SECONDS + 3.0)
                assert done, f"the read cut after send {sent} did not end with NATS frozen"
            assert read.cancelled() or read.exception() is not None
            assert await until_back_to(bucket, before) == before, f"cut after send {sent}"
            sent += 1
        assert sent > 2, "no read was cut off"


async def test_a_read_cancelled_as_its_watch_is_made_leaves_nothing_behind_for_good(
    own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's cancel lands just as the watch's consumer and subscription are made (a
    request's timeout at that moment): the consumer and the subscription go, and so do
    nats-py's heartbeat check and flow control of the watch. Left running, the heartbeat check
    took the silence of the unsubscribed watch for a gap and made its consumer and subscription
    again about 20 s later (its second look, each twice the 5 s idle heartbeat), kept for good."""
    nc = await nats.connect(own_nats.url)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket=f"b{uuid.uuid4().hex[:8]}", history=1)
        await kv.put("run.a", b"1")
        bucket = Bucket(nc, js, kv._stream, lambda: asyncio.sleep(0, 0))
        before = await consumers_and_subscriptions(bucket)
        made: list[JetStreamContext.PushSubscription] = []
        real_subscribe = js.subscribe
        reader: asyncio.Future[Any] | None = None

        async def subscribe_as_the_caller_gives_up(*args: Any, **kwargs: Any) -> Any:
            psub = await real_subscribe(*args, **kwargs)
            made.append(psub)
            assert reader is not None
            reader.cancel()  # reaches the caller before the made watch does
            return psub

        monkeypatch.setattr(js, "subscribe", subscribe_as_the_caller_gives_up)
        reader = asyncio.ensure_future(keywatch.watch_keys(kv, ["run.>"]))
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        assert reader.cancelled()
        (psub,) = made
        jsi = psub._sub._jsi
        assert jsi is not None

        def checks_ended() -> bool:
            return all(task is None or task.done() for task in (jsi._hbtask, jsi._fctask))

        deadline = time.monotonic() + SETTLED_SECONDS
        while not checks_ended() and time.monotonic() < deadline:  # noqa: ASYNC110 - nats-py's tasks, in this process
            await asyncio.sleep(0.05)
        assert checks_ended(), "the unmade watch's heartbeat check runs on: it makes it again"
        assert await until_back_to(bucket, before) == before
    finally:
        await nc.close()
