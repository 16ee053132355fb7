"""The start steps after the declaration wait the start's short request timeout
(``retry.START_REQUEST_TIMEOUT``) for an answer, not nats-py's 5 s: the runner's look at the lock
bucket (``SlotTable.kv``) and its watch (the lock board), the projector's removal of an older
version's consumer and its reader's consumer, the API's token watch and session-signing key.
In a cluster a request about a stream just created may get no answer at all until its replicas
elect a leader (RESULTS s24startup): here the one request is dropped on its way by a proxy
(``tests/dropping_proxy.py``), deterministically, and sent again after the start's timeout.
Then every answer slowed to just under and just over that timeout: each step completes, sent
again only in the second case.

The steps are the services' own functions, run as their service runs them (in
``retry.until_jetstream_ready``, or the projector's reader in its own loop), on a connection
through the proxy; the deployment is declared beforehand on a direct one. The requests are the
real ones, only recorded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from jobrunner.common import eventstore, retry
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable, SlotValue
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api.security.tokens import Role, TokenStore
from jobrunner.services.projector import service as projector
from jobrunner.services.projector.feed import EventFeed
from jobrunner.services.runner.board import LockBoard, open_watch
from tests.dropping_proxy import PublishDroppingProxy
from tests.latency_proxy import latency_proxy
from tests.tools.timed_out_requests import TimedOut

Step = Callable[[NATS, Settings], Awaitable[None]]


@pytest.fixture
async def deployment(own_nats: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Settings]:
    """A fresh deployment declared on a direct connection, with the token bucket the API's
    start opens first."""
    settings = Settings(nats_url=own_nats.url, prefix=f"t{uuid.uuid4().hex[:10]}")
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "declare")
    try:
        await eventstore.ensure_topology(nc.jetstream(), names, settings)
        await TokenStore.open(nc.jetstream(), names)
        # An older version's durable consumer of the projector, for its start to remove.
        await nc.jetstream().add_consumer(
            names.stream, api.ConsumerConfig(durable_name=names.projector_consumer)
        )
        yield settings
    finally:
        await eventstore.close(nc)


# --- each start step, as its service runs it


async def lock_bucket(nc: NATS, settings: Settings) -> None:
    slots = SlotTable(nc.jetstream(), Names(settings.prefix), 3.0)
    await retry.until_jetstream_ready(slots.kv, "the lock bucket")
    await (await slots.kv()).put("probe", b"1")  # the handle it kept works


async def _nothing(value: SlotValue) -> None:
    pass


async def lock_board(nc: NATS, settings: Settings) -> None:
    slots = SlotTable(nc.jetstream(), Names(settings.prefix), 3.0)
    locks = await retry.until_jetstream_ready(slots.kv, "the lock bucket")
    first = await retry.until_jetstream_ready(lambda: open_watch(locks), "the lock bucket's watch")
    board, stop = LockBoard(), asyncio.Event()
    watching = asyncio.create_task(board.watch(locks, stop, _nothing, first))
    try:
        await asyncio.wait_for(board.ready.wait(), 10)
        # The watch follows the bucket, and goes on on the connection's timeout.
        held = SlotValue(job_id="j1", phase="held", job_type="t")
        await locks.put("slot.a", msgspec.json.encode(held))
        async with asyncio.timeout(10):
            while "slot.a" not in board.slots:  # noqa: ASYNC110 - filled by the watch
                await asyncio.sleep(0.05)
        assert first._sub is not None
        assert first._sub._sub._jsi._js._timeout == nc.jetstream()._timeout
    finally:
        stop.set()
        await asyncio.wait({watching}, timeout=10)


async def projector_consumer(nc: NATS, settings: Settings) -> None:
    js, names = nc.jetstream(), Names(settings.prefix)
    await retry.until_jetstream_ready(
        lambda: projector._remove_durable_consumer(js, names), "the event stream's consumers"
    )
    consumers = await js.consumers_info(names.stream)
    assert names.projector_consumer not in [c.name for c in consumers]


async def projector_reader(nc: NATS, settings: Settings) -> None:
    feed = EventFeed(nc.jetstream(), Names(settings.prefix), settings, name="projector")
    await feed.start(1)
    await feed.close()


async def token_watch(nc: NATS, settings: Settings) -> None:
    names = Names(settings.prefix)
    store = await TokenStore.open(nc.jetstream(), names)
    await retry.until_jetstream_ready(store.start_watch, "the token bucket's records")
    try:
        # The watch follows the bucket: a token made elsewhere reaches its copy.
        other = await TokenStore.open(nc.jetstream(), names)
        record, _ = await other.create("seen", Role.VIEWER)
        async with asyncio.timeout(10):
            while record.id not in store._cache:  # noqa: ASYNC110 - filled by the watch
                await asyncio.sleep(0.05)
        # Its later requests (a consumer made again after a reconnect) keep the connection's
        # timeout, not the start's.
        assert store._watcher._sub is not None
        assert store._watcher._sub._sub._jsi._js._timeout == nc.jetstream()._timeout
    finally:
        await store.stop_watch()


async def session_key(nc: NATS, settings: Settings) -> None:
    names = Names(settings.prefix)
    store = await TokenStore.open(nc.jetstream(), names)
    key = await retry.until_jetstream_ready(store.session_key, "the session-signing key")
    again = await TokenStore.open(nc.jetstream(), names)
    assert await again.session_key() == key  # one key, created once


def dropped_request(settings: Settings, step: Step) -> str:
    """The subject of the request of ``step`` that the leaderless replica leaves unanswered."""
    names = Names(settings.prefix)
    tokens = f"KV_{names.tokens_bucket}"
    return {
        lock_bucket: f"$JS.API.STREAM.INFO.KV_{names.locks_bucket}",
        lock_board: f"$JS.API.CONSUMER.CREATE.KV_{names.locks_bucket}",
        projector_consumer: f"$JS.API.CONSUMER.DELETE.{names.stream}.{names.projector_consumer}",
        projector_reader: f"$JS.API.CONSUMER.CREATE.{names.stream}",
        token_watch: f"$JS.API.CONSUMER.CREATE.{tokens}",
        session_key: f"$KV.{names.tokens_bucket}.session-key",
    }[step]


STEPS = [lock_bucket, lock_board, projector_consumer, projector_reader, token_watch, session_key]


@pytest.mark.parametrize("step", STEPS, ids=[s.__name__ for s in STEPS])
async def test_a_start_request_left_unanswered_is_sent_again_after_the_start_timeout(
    own_nats: EmbeddedNats,
    deployment: Settings,
    timed_out: TimedOut,
    step: Step,
) -> None:
    """The step's request gets no answer (dropped before the server): the step sends it again
    after the start's timeout and completes; no request waited nats-py's 5 s (on main each of
    these waited 5 s)."""
    async with PublishDroppingProxy("127.0.0.1", own_nats.port) as proxy:
        nc = await eventstore.connect(Settings(nats_url=proxy.url()), "start")
        try:
            proxy.drop(dropped_request(deployment, step), 1)
            await asyncio.wait_for(step(nc, deployment), 30)
        finally:
            await eventstore.close(nc)
    assert proxy.dropped == 1
    assert [t for _, t in timed_out] == [retry.START_REQUEST_TIMEOUT], timed_out


@pytest.mark.parametrize(
    ("one_way", "sent_again"),
    [(retry.START_REQUEST_TIMEOUT / 2 - 0.1, False), (retry.START_REQUEST_TIMEOUT / 2 + 0.1, True)],
    ids=["just-under", "just-over"],
)
async def test_every_start_step_over_a_link_near_the_start_timeout_completes(
    own_nats: EmbeddedNats,
    deployment: Settings,
    timed_out: TimedOut,
    one_way: float,
    sent_again: bool,
) -> None:
    """Every answer takes a round trip just under / just over the start's first timeout: the
    steps complete either way; just under, nothing is sent again; just over, the first try
    of a request times out and the doubled timeout serves it."""
    async with latency_proxy("127.0.0.1", own_nats.port, one_way) as url:
        nc = await eventstore.connect(Settings(nats_url=url), "start")
        try:
            for step in STEPS:
                await asyncio.wait_for(step(nc, deployment), 60)
        finally:
            await eventstore.close(nc)
    start_timeouts = [s for s, t in timed_out if t == retry.START_REQUEST_TIMEOUT]
    assert bool(start_timeouts) == sent_again, timed_out
    assert all(t < retry.LONGEST_START_REQUEST_TIMEOUT for _, t in timed_out), timed_out
