"""A bucket watch whose messages nats-py dropped (its queue past its limit: "slow consumer") has a
gap its ordered consumer never fills: every user watches again from a new current state, so the
token listing lists every token and the runners' lock board knows every lease. nats-py's limit is
forced small here (1 MB, less than the server's first flow-control window) for the first watch,
whose reader is held up at its first entry, so that nats-py drops."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from structlog.testing import capture_logs

from jobrunner.common import eventstore, keywatch
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotValue
from jobrunner.contracts.names import Names
from jobrunner.services.api.security.tokens import Role, TokenStore
from tests.tools.lock_board import watching_board
from tests.tools.token_records import store_viewer_tokens

pytestmark = pytest.mark.timeout(120)

RECORDS = 4_000  # about 4 MB of records: past the forced limit, at once
LOST = "bucket watch lost messages in nats-py: watched again"


@pytest.fixture
async def js(nats_server_url: str) -> AsyncIterator[JetStreamContext]:
    """A connection as the services make it (``eventstore.connect``): nats-py's reports of the
    messages it drops reach ``subscription.lost_messages``."""
    nc = await eventstore.connect(Settings(nats_url=nats_server_url, prefix="drops"), "test")
    try:
        yield nc.jetstream()
    finally:
        await eventstore.close(nc)


def small_nats_py_queues(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch, watches: int | None = None
) -> None:
    """The next ``watches`` watches made on ``js`` (all, if None) get a nats-py queue of 1 MB.
    (Every watch's would drop even with its reader quick: the server's flow-control window
    grows to 32 MiB while the reader keeps up.)"""
    subscribe = js.subscribe
    made = 0

    async def with_a_small_queue(*args: Any, **options: Any) -> Any:
        nonlocal made
        made += 1
        if watches is not None and made > watches:
            return await subscribe(*args, **options)
        return await subscribe(*args, **(options | {"pending_bytes_limit": 1_000_000}))

    monkeypatch.setattr(js, "subscribe", with_a_small_queue)


def first_entry_held_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first watch's reader takes its first entry, then nothing for a second: the watch's
    queue (256 entries) fills, and nats-py's own behind it."""
    held = False

    async def late(self: KeyValue.KeyWatcher) -> Any:
        nonlocal held
        entry = await real_next(self)
        if not held:
            held = True
            await asyncio.sleep(1.0)
        return entry

    real_next = KeyValue.KeyWatcher.__anext__
    monkeypatch.setattr(KeyValue.KeyWatcher, "__anext__", late)
    real_updates = KeyValue.KeyWatcher.updates

    async def late_update(self: KeyValue.KeyWatcher, timeout: float = 5.0) -> Any:
        nonlocal held
        entry = await real_updates(self, timeout)
        if not held:
            held = True
            await asyncio.sleep(1.0)
        return entry

    monkeypatch.setattr(KeyValue.KeyWatcher, "updates", late_update)


async def test_a_token_listing_whose_messages_nats_py_dropped_lists_every_token(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /api/tokens`` while nats-py drops part of its watch: every token is listed (the
    listing watched again), none missing. Before: the listing waited for the dropped records
    until its 5 s bound and failed (or, before the listing waited for every stored key, it
    answered without them)."""
    store = await TokenStore.open(js, Names(f"t{uuid.uuid4().hex[:8]}"))
    await store_viewer_tokens(js, store, RECORDS, padding=900)
    small_nats_py_queues(js, monkeypatch, watches=1)
    first_entry_held_up(monkeypatch)
    with capture_logs() as logs:
        records = await asyncio.wait_for(store.all(), 60)
    assert LOST in [log["event"] for log in logs], "nothing dropped: the test tested nothing"
    assert sorted(r.id for r in records) == sorted(f"t{n}" for n in range(RECORDS))


async def test_a_listing_that_keeps_losing_messages_fails_with_a_clear_error(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader so slow that every watch loses messages: after ``LISTING_TRIES`` watches the
    listing fails with ``WatchLostMessages`` (a NATS error: the API's 503
    EVENT_STORE_UNAVAILABLE), never a list with a gap."""
    kv = await js.create_key_value(bucket=f"d{uuid.uuid4().hex[:10]}")
    await asyncio.gather(*(kv.put(f"token.t{n}", b"x" * 900) for n in range(RECORDS)))
    small_nats_py_queues(js, monkeypatch)
    real_updates = KeyValue.KeyWatcher.updates
    made = 0
    real_watch = keywatch.watch_keys

    async def counted(*args: Any) -> keywatch.Watch:
        nonlocal made
        made += 1
        return await real_watch(*args)

    async def always_late(self: KeyValue.KeyWatcher, timeout: float = 5.0) -> Any:
        entry = await real_updates(self, timeout)
        await asyncio.sleep(0.2)
        return entry

    monkeypatch.setattr(keywatch, "watch_keys", counted)
    monkeypatch.setattr(KeyValue.KeyWatcher, "updates", always_late)
    with pytest.raises(keywatch.WatchLostMessages):
        await asyncio.wait_for(keywatch.current_entries(kv, ("token.>",), 5.0), 60)
    assert made == keywatch.LISTING_TRIES
    await js.delete_key_value(kv._name)


async def test_a_lock_board_whose_watch_lost_messages_knows_every_lease(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runners' lock board while nats-py drops part of its watch: it watches again and
    knows every slot's lease (a job holding one is never taken for a free slot). Before: the
    board waited for the dropped leases for ever (its watch never said its state was read)."""
    kv = await js.create_key_value(bucket=f"b{uuid.uuid4().hex[:10]}")
    value = msgspec.json.encode(SlotValue(job_id="j" * 900, phase="held", job_type="t"))
    await asyncio.gather(*(kv.put(f"slot.s{n}", value) for n in range(RECORDS)))
    small_nats_py_queues(js, monkeypatch, watches=1)
    first_entry_held_up(monkeypatch)
    try:
        with capture_logs() as logs:
            async with asyncio.timeout(60), watching_board(kv) as (board, _):
                assert LOST in [log["event"] for log in logs], "nothing dropped"
                while len(board.slots) < RECORDS:  # noqa: ASYNC110 - the board's state: nothing signals it whole
                    await asyncio.sleep(0.05)
                assert sorted(board.slots) == sorted(f"slot.s{n}" for n in range(RECORDS))
    finally:
        await js.delete_key_value(kv._name)


async def test_the_api_token_watch_that_lost_messages_knows_every_token(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API instance's watch of the tokens while nats-py drops part of it: it watches again,
    and its copy holds every token (a request with one is not refused for want of it, an open
    stream of one is not ended), a token created afterwards too. Before: the start waited for
    the dropped records until its 10 s bound and failed."""
    store = await TokenStore.open(js, Names(f"t{uuid.uuid4().hex[:8]}"))
    await store_viewer_tokens(js, store, RECORDS, padding=900)
    small_nats_py_queues(js, monkeypatch, watches=1)
    first_entry_held_up(monkeypatch)
    with capture_logs() as logs:
        await store.start_watch()
    try:
        assert LOST in [log["event"] for log in logs], "nothing dropped: the test tested nothing"
        assert sorted(store._cache) == sorted(f"t{n}" for n in range(RECORDS))
        created, _ = await store.create("later", Role.VIEWER)
        async with asyncio.timeout(10):
            while created.id not in store._cache:  # noqa: ASYNC110 - the watch's copy: nothing signals it
                await asyncio.sleep(0.05)
    finally:
        await store.stop_watch()
