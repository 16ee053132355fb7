"""The largest values the settings take work against a real nats-server and a real Postgres:
what a setting's upper bound admits, JetStream stores as configured and Postgres and the
kernel take (the bounds are what the parts hold, README "Configuration")."""

from __future__ import annotations

import msgspec
import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import BOUNDS, Settings, SettingsError
from jobrunner.contracts.names import Names
from jobrunner.services.projector.service import open_pool
from jobrunner.services.runner.service import request_ack_wait, subscribe_requests

NATS_BOUND = (
    "stream_max_age_days",
    "stream_max_consumers",
    "idempotency_ttl_seconds",
    "runner_heartbeat_seconds",
    "lease_ttl_seconds",
)


@pytest.fixture
def largest(settings: Settings) -> Settings:
    """The test's settings, every NATS-bound setting at its upper bound."""
    return msgspec.structs.replace(settings, **{name: BOUNDS[name].high for name in NATS_BOUND})


async def test_the_largest_values_are_taken_by_jetstream(largest: Settings) -> None:
    """The event stream, the heartbeat and Idempotency-Key buckets and the runners' request
    consumer made with every NATS-bound setting at its largest."""
    names = Names(largest.prefix)
    nc = await eventstore.connect(largest, "test")
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, largest)
        stream = (await js.stream_info(names.stream)).config
        assert stream.max_age == largest.stream_max_age_days * 86400
        assert stream.max_consumers == largest.stream_max_consumers
        await subscribe_requests(js, names, request_ack_wait(largest.lease_ttl_seconds))
        consumer = await js.consumer_info(names.stream, names.runner_consumer)
        assert consumer.config.ack_wait == largest.lease_ttl_seconds
    finally:
        await eventstore.close(nc)


async def test_a_stream_size_beyond_the_servers_storage_is_refused_in_a_sentence(
    settings: Settings,
) -> None:
    """The size a setting may hold is JetStream's int64; the size a server has room for is its
    storage, known only when it is asked: the start stops, naming the setting (was: a
    ServerError's traceback, err_code 10047)."""
    too_large = msgspec.structs.replace(settings, stream_max_bytes=BOUNDS["stream_max_bytes"].high)
    nc = await eventstore.connect(too_large, "test")
    try:
        with pytest.raises(SettingsError) as raised:
            await eventstore.ensure_topology(nc.jetstream(), Names(too_large.prefix), too_large)
    finally:
        await eventstore.close(nc)
    assert str(raised.value).startswith(
        f"stream_max_bytes = {too_large.stream_max_bytes} is more than the NATS server has room for"
    )


async def test_the_longest_projector_dead_bound_is_taken_by_postgres_and_the_kernel(
    settings: Settings,
) -> None:
    """The projector's connections made with projector_postgres_dead_seconds at its largest:
    the socket's keepalive and user timeout, and the session's lock_timeout (twice it) and
    keepalive settings, all taken; the projector reads through them."""
    largest = BOUNDS["projector_postgres_dead_seconds"].high
    longest = msgspec.structs.replace(settings, projector_postgres_dead_seconds=largest)
    pool = await open_pool(longest)
    try:
        async with pool.acquire() as conn:
            setting = "SELECT setting FROM pg_settings WHERE name = $1"
            assert await conn.fetchval(setting, "lock_timeout") == str(int(2 * largest * 1000))
            assert await conn.fetchval(setting, "tcp_keepalives_idle") == "32767"  # over TCP
    finally:
        await pool.close()
