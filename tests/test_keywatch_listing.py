"""A watch's ``None`` (the current state delivered) comes only once every key stored when the
watch began has come: a listing read up to it misses no record, whatever is written meanwhile
(a token listed while others are created, revoked and deleted; an admin's DELETE found a token
in one listing and not in the next, session 40's fuzzer)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.js import api
from nats.js.kv import KeyValue

from jobrunner.common import keywatch

pytestmark = pytest.mark.timeout(180)

STABLE = [f"token.s{i:03d}" for i in range(20)]
# The writes each admin makes at most while the listings run (four keys a round): a fixed amount
# of work, whatever the machine's speed.
CHURN_ROUNDS = 400


@pytest.fixture(params=[1, 5], ids=["history 1", "history 5"])
async def bucket(request: pytest.FixtureRequest, nats_server_url: str) -> AsyncIterator[KeyValue]:
    """A bucket of ``STABLE`` keys (the lock bucket keeps one value a key, the token bucket 5)."""
    nc = await nats.connect(nats_server_url)
    js = nc.jetstream()
    name = f"l{uuid.uuid4().hex[:10]}"
    kv = await js.create_key_value(bucket=name, history=request.param)
    for key in STABLE:
        await kv.put(key, b"record")
    try:
        yield kv
    finally:
        await js.delete_key_value(name)
        await nc.close()


async def listed(kv: KeyValue) -> set[str]:
    """The keys holding a value, read as ``TokenStore.all`` reads them: up to the ``None``."""
    keys: set[str] = set()
    # Bounded: a listing that hung ended its xdist worker at the thread timeout instead.
    async with asyncio.timeout(30), keywatch.watching(kv, ("token.>",)) as watcher:
        while (entry := await watcher.updates(timeout=10)) is not None:  # type: ignore[no-untyped-call]
            if entry.operation is None:
                keys.add(entry.key)
    return keys


async def churn(kv: KeyValue, stop: asyncio.Event, seed: int) -> None:
    """What admins do meanwhile: create tokens, revoke (rewrite) the listed ones, delete some,
    and write the bucket's other keys."""
    rng = random.Random(seed)
    n = 0
    while not stop.is_set() and n < CHURN_ROUNDS:
        n += 1
        await kv.put(f"token.n{seed}x{n}", b"new")
        await kv.put(rng.choice(STABLE), b"revoked")
        await kv.put(f"name.{seed}x{n}", b"claim")
        if n % 3 == 0:
            await kv.delete(f"token.n{seed}x{n - 1}")


async def test_a_listing_while_records_change_misses_none_that_stayed(bucket: KeyValue) -> None:
    """Every record stored all along is in every listing, while others are written at once."""
    stop = asyncio.Event()
    writers = [asyncio.create_task(churn(bucket, stop, seed)) for seed in range(2)]
    try:

        async def list_many() -> list[set[str]]:
            return [await listed(bucket) for _ in range(20)]

        listings = [
            keys for many in await asyncio.gather(*(list_many() for _ in range(3))) for keys in many
        ]
    finally:
        stop.set()
        await asyncio.gather(*writers)
    incomplete = [sorted(set(STABLE) - keys) for keys in listings if not set(STABLE) <= keys]
    assert incomplete == [], f"{len(incomplete)} of {len(listings)} listings missed records"


async def test_a_listing_of_an_empty_bucket_ends_at_once(bucket: KeyValue) -> None:
    """No key stored under the filter: the listing ends empty, without waiting."""
    async with asyncio.timeout(5), keywatch.watching(bucket, ("nothing.>",)) as watcher:
        assert await watcher.updates(timeout=5) is None  # type: ignore[no-untyped-call]


async def test_a_listing_ends_when_a_key_it_expected_vanished_without_a_marker(
    bucket: KeyValue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key removed from the stream with no marker left (a stream-level purge) while the watch
    begins: the listing still ends, without it."""
    js = bucket._js
    real = keywatch.stored_subjects
    gone = bucket._pre + STABLE[0]

    async def purged_after_the_look(kv: KeyValue, filters: list[str]) -> set[str]:
        subjects = await real(kv, filters)
        if gone in subjects:
            await js.purge_stream(kv._stream, subject=gone)
        return subjects

    monkeypatch.setattr(keywatch, "stored_subjects", purged_after_the_look)
    keys = await asyncio.wait_for(listed(bucket), 10)
    assert keys == set(STABLE[1:])


async def test_a_listing_whose_only_key_vanished_before_anything_came_ends_empty(
    bucket: KeyValue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only key under the filter removed without a marker between the watch's look-up and
    its consumer's start: no message ever comes, and the listing still ends, empty, once the
    watch has asked again (``UNSEEN_CHECK_SECONDS``) rather than at its caller's timeout (10 s
    here: an error instead of the right list)."""
    await bucket.put("only.one", b"record")
    js = bucket._js
    real = keywatch.stored_subjects
    looked = 0

    async def purged_after_the_first_look(kv: KeyValue, filters: list[str]) -> set[str]:
        nonlocal looked
        subjects = await real(kv, filters)
        looked += 1
        if looked == 1:
            await js.purge_stream(kv._stream, subject=kv._pre + "only.one")
        return subjects

    monkeypatch.setattr(keywatch, "stored_subjects", purged_after_the_first_look)
    async with asyncio.timeout(5), keywatch.watching(bucket, ("only.>",)) as watcher:
        assert await watcher.updates(timeout=10) is None  # type: ignore[no-untyped-call]
    assert looked == 2, "asked again once"


@pytest.mark.parametrize(
    "late",
    [keywatch.UNSEEN_CHECK_SECONDS - 0.3, keywatch.UNSEEN_CHECK_SECONDS + 0.5],
    ids=["before-the-check", "after-the-check"],
)
async def test_a_record_whose_message_comes_late_is_listed(
    bucket: KeyValue, monkeypatch: pytest.MonkeyPatch, late: float
) -> None:
    """The first message of the watch handled ``late`` seconds after it arrived, before or
    after the watch asks again which keys are stored: every record is listed all the same (the
    second look ends the wait only for keys gone, never for ones still to come)."""
    js = bucket._js
    subscribe = js.subscribe

    async def first_message_late(*args: Any, cb: Any, **options: Any) -> Any:
        held = False

        async def late_cb(msg: Any) -> None:
            nonlocal held
            if not held:
                held = True
                await asyncio.sleep(late)
            await cb(msg)

        return await subscribe(*args, cb=late_cb, **options)

    monkeypatch.setattr(js, "subscribe", first_message_late)
    assert await asyncio.wait_for(listed(bucket), 10) == set(STABLE)


@pytest.mark.parametrize(
    "look",
    ["fails", "slower-than-its-bound", "just-within-its-bound"],
)
async def test_a_listing_of_a_quiet_bucket_ends_after_a_failed_second_look(
    bucket: KeyValue, monkeypatch: pytest.MonkeyPatch, look: str
) -> None:
    """``slot.a`` and ``slot.b`` stored, ``slot.b`` removed without a marker right after the
    watch's look-up, and nothing written afterwards: the watch's next two looks fail (NATS away)
    or the next takes longer than ``UNSEEN_CHECK_BOUND``, and the listing still ends with
    ``slot.a`` once a look answers; a look just within its bound ends it at once."""
    monkeypatch.setattr(keywatch, "UNSEEN_CHECK_BOUND", 0.5)
    await bucket.put("slot.a", b"lease")
    await bucket.put("slot.b", b"lease")
    js = bucket._js
    real = keywatch.stored_subjects
    looked = 0

    async def faulty_second_look(kv: KeyValue, filters: list[str]) -> set[str]:
        nonlocal looked
        looked += 1
        if look == "fails" and looked in (2, 3):
            raise TimeoutError
        if looked == 2 and look != "fails":
            await asyncio.sleep(0.7 if look == "slower-than-its-bound" else 0.3)
        subjects = await real(kv, filters)
        if looked == 1:
            await js.purge_stream(kv._stream, subject=kv._pre + "slot.b")
        return subjects

    monkeypatch.setattr(keywatch, "stored_subjects", faulty_second_look)
    keys = []
    async with asyncio.timeout(10), keywatch.watching(bucket, ("slot.>",)) as watcher:
        while (entry := await watcher.updates(timeout=10)) is not None:  # type: ignore[no-untyped-call]
            keys.append(entry.key)
    assert keys == ["slot.a"]
    assert looked == {"fails": 4, "slower-than-its-bound": 3, "just-within-its-bound": 2}[look]


async def test_a_listing_of_more_than_a_page_of_keys_has_every_one_before_its_end(
    nats_server_url: str,
) -> None:
    """100,001 keys under the filter: one more than the server names in a stream info answer
    (JSMaxSubjectDetails); the last one (sorted and written last) is listed too, before the
    ``None``, not after it."""
    nc = await nats.connect(nats_server_url)
    js = nc.jetstream()
    name = f"p{uuid.uuid4().hex[:10]}"
    kv = await js.create_key_value(bucket=name)
    count = keywatch.SUBJECTS_PAGE + 1
    try:
        for first in range(0, count, 5_000):
            await asyncio.gather(
                *(
                    js.publish(f"$KV.{name}.queue.k{n:06d}", b"place")
                    for n in range(first, min(first + 5_000, count))
                )
            )
        listed_before_the_end: set[str] = set()
        async with asyncio.timeout(120), keywatch.watching(kv, ("queue.>",)) as watcher:
            while (entry := await watcher.updates(timeout=30)) is not None:  # type: ignore[no-untyped-call]
                listed_before_the_end.add(entry.key)
        assert len(listed_before_the_end) == count
        assert f"queue.k{count - 1:06d}" in listed_before_the_end
    finally:
        await js.delete_key_value(name)
        await nc.close()


async def test_a_listing_whose_consumer_was_made_again_midway_lists_each_keys_last_value(
    nats_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``A``, then ``K`` written twice (history 5: both kept). The watch's consumer is made again
    after ``A`` (what nats-py does after a gap: from the message after the last received), the
    rest of the old consumer's messages lost: the new one sends ``K``'s old revision before its
    last. The listing has ``K``'s last value (the watch ends and is made again), never the old."""
    nc = await nats.connect(nats_server_url)
    js = nc.jetstream()
    name = f"r{uuid.uuid4().hex[:10]}"
    kv = await js.create_key_value(bucket=name, history=5)
    await kv.put("token.a", b"a")
    await kv.put("token.k", b"old")
    await kv.put("token.k", b"new")
    subscribe = js.subscribe
    watches = 0

    async def reset_after_the_first_message(*args: Any, cb: Any, **options: Any) -> Any:
        nonlocal watches
        watches += 1
        if watches > 1:
            return await subscribe(*args, cb=cb, **options)
        made: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        old_consumer: str | None = None

        async def cb_resetting(msg: Any) -> None:
            nonlocal old_consumer
            psub = await made
            consumer = msg.reply.split(".")[3]
            if old_consumer is None:
                old_consumer = consumer
                await cb(msg)
                await psub._sub._jsi.reset_ordered_consumer(2)  # A was stream sequence 1
            elif consumer != old_consumer:
                await cb(msg)

        psub = await subscribe(*args, cb=cb_resetting, **options)
        made.set_result(psub)
        return psub

    monkeypatch.setattr(js, "subscribe", reset_after_the_first_message)
    try:
        async with asyncio.timeout(30):
            entries = await keywatch.current_entries(kv, ("token.>",), 10)
        assert {entry.key: entry.value for entry in entries} == {"token.a": b"a", "token.k": b"new"}
        assert watches == 2, "the watch made again: the test tested its reset"
    finally:
        await js.delete_key_value(name)
        await nc.close()


async def test_a_listing_read_as_it_comes_never_leaves_the_server_waiting_for_its_answer(
    bucket: KeyValue, nats_server_url: str
) -> None:
    """A listing of many flow-control windows (20 MB of records), read as it comes, is answered
    by the watch as it takes each message: the server never stops to wait for an answer (its
    stalled heartbeat, ``Nats-Consumer-Stalled``, the 5 s it would otherwise sit idle each
    time: nats-py's own sender of held answers is stopped by
    ``flowcontrol.answer_flow_control_once_taken``)."""
    js = bucket._js
    prefix = bucket._pre
    count = 20_000
    value = b"x" * 1000
    for first in range(0, count, 2_000):
        await asyncio.gather(
            *(js.publish(f"{prefix}token.k{n:06d}", value) for n in range(first, first + 2_000))
        )
    requests: list[str] = []
    stalls: list[str] = []

    async def note(msg: Any) -> None:
        headers = msg.headers or {}
        if headers.get("Status") == "100" and "FlowControl" in headers.get("Description", ""):
            requests.append(msg.reply)
        if api.Header.CONSUMER_STALLED in headers:
            stalls.append(headers[api.Header.CONSUMER_STALLED])

    spy = await nats.connect(nats_server_url)  # sees what the server sends the watch
    keys = 0
    try:
        async with asyncio.timeout(120), keywatch.watching(bucket, ("token.>",)) as watcher:
            await spy.subscribe(watcher._sub._sub._jsi._ccreq.deliver_subject, cb=note)
            while await watcher.updates(timeout=30) is not None:  # type: ignore[no-untyped-call]
                keys += 1
                if keys % 50 == 0:
                    await asyncio.sleep(0.001)  # a reader that yields, as the API's does
    finally:
        await spy.close()
    assert requests, "no flow-control request came: the test tested nothing"
    assert stalls == [], "the server waited for an answer the watch held back"
    assert keys == count + len(STABLE)
