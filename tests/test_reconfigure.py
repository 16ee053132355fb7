"""Settings JetStream keeps in its own configuration (a bucket's TTL, a consumer's ack wait)
follow a changed setting on the next start instead of keeping what they were created with."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from tests.system import System


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    nc = await eventstore.connect(settings, "test-reconfigure")
    try:
        yield nc.jetstream()
    finally:
        await eventstore.close(nc)


async def ack_wait_becomes(
    js: JetStreamContext, stream: str, consumer: str, seconds: float
) -> None:
    """Until the durable ``consumer`` has the ack wait ``seconds`` (a service applies it as it
    starts)."""
    async with asyncio.timeout(30):
        while True:
            try:
                info = await js.consumer_info(stream, consumer)
            except Exception:  # not created yet
                info = None
            if info is not None and info.config.ack_wait == pytest.approx(seconds):
                return
            await asyncio.sleep(0.05)


async def test_changed_idempotency_ttl_applies_to_the_existing_bucket(
    settings: Settings, js: JetStreamContext
) -> None:
    """idempotency_ttl_seconds changed between two starts: the bucket keeps keys that long."""
    names = Names(settings.prefix)
    await eventstore.ensure_topology(js, names, settings)
    changed = msgspec.structs.replace(settings, idempotency_ttl_seconds=90.0)
    await eventstore.ensure_topology(js, names, changed)
    info = await js.stream_info(f"KV_{names.idempotency_bucket}")
    assert info.config.max_age == pytest.approx(90.0)
    assert info.config.duplicate_window <= 90.0


async def test_changed_notifier_ack_wait_applies_to_the_existing_consumer(
    settings: Settings, js: JetStreamContext
) -> None:
    """notifier_ack_wait_seconds changed between two starts: a dead notifier's webhooks are
    taken over after the new time."""
    names = Names(settings.prefix)
    system = System(settings)
    try:
        await system.start_notifier("first", notifier_ack_wait_seconds=45.0)
        await ack_wait_becomes(js, names.stream, names.notifier_consumer, 45.0)
        await system.stop_service("first")
        await system.start_notifier("second", notifier_ack_wait_seconds=12.0)
        await ack_wait_becomes(js, names.stream, names.notifier_consumer, 12.0)
    finally:
        await system.stop()


async def test_changed_lease_ttl_applies_to_the_runners_consumer(
    settings: Settings, js: JetStreamContext
) -> None:
    """lease_ttl_seconds changed between two starts: a request whose runner died comes back
    after twice the new TTL."""
    names = Names(settings.prefix)
    system = System(settings)
    try:
        await system.start_runner("first", lease_ttl_seconds=5.0)
        await ack_wait_becomes(js, names.stream, names.runner_consumer, 10.0)
        await system.stop_service("first")
        await system.start_runner("second", lease_ttl_seconds=4.0)
        await ack_wait_becomes(js, names.stream, names.runner_consumer, 8.0)
    finally:
        await system.stop()
