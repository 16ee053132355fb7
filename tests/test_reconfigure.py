"""Settings JetStream keeps in its own configuration (a bucket's TTL, a consumer's ack wait)
follow a changed setting on the next start instead of keeping what they were created with."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.js import JetStreamContext, api

from jobrunner.common import eventstore
from jobrunner.common.reconfigure import ConsumerUnusable
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
    after the new TTL."""
    names = Names(settings.prefix)
    system = System(settings)
    try:
        await system.start_runner("first", lease_ttl_seconds=5.0)
        await ack_wait_becomes(js, names.stream, names.runner_consumer, 5.0)
        await system.stop_service("first")
        await system.start_runner("second", lease_ttl_seconds=4.0)
        await ack_wait_becomes(js, names.stream, names.runner_consumer, 4.0)
    finally:
        await system.stop()


async def consumer_becomes(
    js: JetStreamContext, stream: str, consumer: str, filter_subject: str
) -> api.ConsumerConfig:
    """The durable ``consumer``'s configuration once its filter is ``filter_subject``."""
    async with asyncio.timeout(30):
        while True:
            config = (await js.consumer_info(stream, consumer)).config
            if config.filter_subject == filter_subject and not config.filter_subjects:
                return config
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("service", ["runner", "notifier"])
async def test_a_consumer_left_with_another_filter_and_limits_is_made_what_the_service_needs(
    settings: Settings, js: JetStreamContext, service: str
) -> None:
    """An older version or an operator left the shared consumer filtering other subjects,
    dropping a message after 3 deliveries and holding 5 at most: the service starting makes it
    what it needs. (Before: it bound to it as it was: requests or job ends never delivered to
    it, a request waiting for its lock dropped after 3 deliveries.)"""
    names = Names(settings.prefix)
    await eventstore.ensure_topology(js, names, settings)
    consumer = names.runner_consumer if service == "runner" else names.notifier_consumer
    kind = "requested" if service == "runner" else "status"
    await js.add_consumer(
        names.stream,
        api.ConsumerConfig(
            durable_name=consumer,
            filter_subjects=[names.kind_subjects("cancel"), names.kind_subjects("logged")],
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=3,
            max_ack_pending=5,
        ),
    )
    system = System(settings)
    try:
        if service == "runner":
            await system.start_runner(lease_ttl_seconds=4.0)
        else:
            await system.start_notifier(notifier_ack_wait_seconds=12.0)
        config = await consumer_becomes(js, names.stream, consumer, names.kind_subjects(kind))
        assert config.ack_policy == api.AckPolicy.EXPLICIT
        assert config.ack_wait == pytest.approx(4.0 if service == "runner" else 12.0)
        assert config.max_deliver == -1
        assert config.max_ack_pending == 10_000
    finally:
        await system.stop()


@pytest.mark.parametrize(
    ("service", "left", "reason"),
    [
        ("runner", {"ack_policy": api.AckPolicy.NONE}, "has ack policy 'none'"),
        ("runner", {"ack_policy": api.AckPolicy.ALL}, "has ack policy 'all'"),
        ("notifier", {"deliver_subject": "somewhere.else"}, "pushes to a deliver subject"),
    ],
)
async def test_a_consumer_jetstream_cannot_change_refuses_the_start(
    settings: Settings, js: JetStreamContext, service: str, left: dict[str, object], reason: str
) -> None:
    """A shared consumer left taking no acks (or acks of everything before a message), or
    pushing to a subject instead of being pulled: JetStream cannot change either, so the service
    refuses to start with a sentence saying to delete it, and the consumer is left as it was.
    (Before: it bound to it; with no acks every request was taken once and lost with its runner,
    a push consumer answered no fetch.)"""
    names = Names(settings.prefix)
    await eventstore.ensure_topology(js, names, settings)
    consumer = names.runner_consumer if service == "runner" else names.notifier_consumer
    kind = "requested" if service == "runner" else "status"
    config = api.ConsumerConfig(
        durable_name=consumer,
        filter_subject=names.kind_subjects(kind),
        ack_policy=api.AckPolicy.EXPLICIT,
        max_deliver=-1,
    )
    await js.add_consumer(names.stream, config.evolve(**left))
    system = System(settings)
    try:
        if service == "runner":
            await system.start_runner("refused")
        else:
            await system.start_notifier("refused")
        with pytest.raises(ConsumerUnusable) as refused:
            await system.exited("refused")
        assert reason in str(refused.value)
        assert f"nats consumer rm {names.stream} {consumer}" in str(refused.value)
        after = (await js.consumer_info(names.stream, consumer)).config
        assert after.ack_policy == config.evolve(**left).ack_policy
    finally:
        await system.stop()
