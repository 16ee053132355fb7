"""Every setting at either end of its range works against a real nats-server and a real
Postgres: what a bound admits, JetStream stores as configured (the event stream, the lock,
heartbeat, Idempotency-Key and artifacts buckets, the runners' and notifiers' consumers, a
download's reader), and Postgres and the kernel take (the projector's and the API's
connections). The bounds are what these parts hold (README "Configuration")."""

from __future__ import annotations

import io

import msgspec
import pytest
from nats.aio.client import Client as NATS

from jobrunner.common import artifactstore, eventstore, runnerpool
from jobrunner.common.settings import BOUNDS, Settings, SettingsError, load_settings
from jobrunner.contracts.names import Names
from jobrunner.services.api.context import health_pool, read_pool
from jobrunner.services.notifier.service import Notifier
from jobrunner.services.projector.service import open_pool
from jobrunner.services.runner.service import request_ack_wait, subscribe_requests

# The settings not set to an end here, and why: every other one is.
NOT_AT_THE_END = {
    # Beyond what this server's storage holds: refused in a sentence (its own test below).
    "stream_max_bytes": "high",
    # JetStream's own limit, but one server holds one replica.
    "stream_replicas": "high",
}


def at_the_end(settings: Settings, end: str) -> Settings:
    """``settings`` with every numeric setting at its ``end`` ("low" or "high")."""
    ends = {
        name: getattr(bounds, end)
        for name, bounds in BOUNDS.items()
        if NOT_AT_THE_END.get(name) != end
    }
    # Below the keep-alive, as a start requires (load_settings).
    ends["stream_read_timeout_seconds"] = ends["sse_keepalive_seconds"] / 2
    return msgspec.structs.replace(settings, **ends)


@pytest.fixture(params=["low", "high"])
def at_an_end(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    return at_the_end(settings, request.param)


async def test_jetstream_takes_every_setting_at_either_end(at_an_end: Settings) -> None:
    """The stream and buckets made, and the runners' and notifiers' consumers: each as set
    (below 0.1 s, a max age or TTL stopped the start with JetStream's error 10052; beyond
    int64 nanoseconds, with error 10025)."""
    settings = at_an_end
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test")
    try:
        await _made_as_set(nc, names, settings)
    finally:
        await eventstore.close(nc)


async def _made_as_set(nc: NATS, names: Names, settings: Settings) -> None:
    js = nc.jetstream()
    await eventstore.ensure_topology(js, names, settings)
    stream = (await js.stream_info(names.stream)).config
    assert stream.max_age == pytest.approx(settings.stream_max_age_days * 86400)
    assert stream.max_consumers == settings.stream_max_consumers
    idempotency = await js.key_value(names.idempotency_bucket)
    assert (await idempotency.status()).ttl == pytest.approx(settings.idempotency_ttl_seconds)
    heartbeats = await js.key_value(names.runners_bucket)
    assert (await heartbeats.status()).ttl == pytest.approx(runnerpool.heartbeat_ttl(settings))
    await subscribe_requests(js, names, request_ack_wait(settings.lease_ttl_seconds))
    runners = await js.consumer_info(names.stream, names.runner_consumer)
    assert runners.config.ack_wait == pytest.approx(request_ack_wait(settings.lease_ttl_seconds))
    await Notifier(settings, nc).open_consumer()
    notifiers = await js.consumer_info(names.stream, names.notifier_consumer)
    assert notifiers.config.ack_wait == pytest.approx(settings.notifier_ack_wait_seconds)


async def test_a_download_reads_with_the_longest_idle_bound(settings: Settings) -> None:
    """A download's consumer lives three idle bounds (artifactstore._inactive_threshold): at
    the largest artifact_read_idle_seconds JetStream takes it and the file is read whole (at a
    third more, every download was refused: error 10025)."""
    largest = at_the_end(settings, "high")
    names = Names(largest.prefix)
    content = b"artifact bytes " * 1000
    nc = await eventstore.connect(largest, "test")
    try:
        js = nc.jetstream()
        await eventstore.ensure_topology(js, names, largest)
        await artifactstore.put_file(
            js, names, "report.txt", io.BytesIO(content), len(content), lambda: False
        )
        info = await artifactstore.object_info(js, names, "report.txt")
        chunks = artifactstore.read_chunks(js, names, info, largest.artifact_read_idle_seconds)
        assert b"".join([chunk async for chunk in chunks]) == content
    finally:
        await eventstore.close(nc)


async def test_postgres_takes_every_setting_at_either_end(at_an_end: Settings) -> None:
    """The projector's connections (keepalive, user timeout, lock_timeout of twice the dead
    bound) and the API's read and health pools, read through at the bound."""
    settings = at_an_end
    pool = await open_pool(settings)
    try:
        async with pool.acquire() as conn:
            setting = "SELECT setting FROM pg_settings WHERE name = $1"
            lock_timeout = int(2 * settings.projector_postgres_dead_seconds * 1000)
            assert await conn.fetchval(setting, "lock_timeout") == str(lock_timeout)
    finally:
        await pool.close()
    for deadline, opened in (
        (settings.api_read_timeout_seconds, read_pool),
        (settings.health_postgres_timeout_seconds, health_pool),
    ):
        if deadline < 0.5:
            continue  # too short for a read on a loaded machine: the bound is the deadline's
        reads = await opened(settings.database_url, deadline)
        try:
            assert await reads.fetchval("SELECT 1") == 1
        finally:
            await reads.close()


async def test_the_longest_projector_dead_bound_is_taken_by_the_kernel(settings: Settings) -> None:
    """Its keepalive probes start after half of it: Linux's longest idle, 32767 s."""
    largest = at_the_end(settings, "high")
    pool = await open_pool(largest)
    try:
        async with pool.acquire() as conn:
            setting = "SELECT setting FROM pg_settings WHERE name = $1"
            assert await conn.fetchval(setting, "tcp_keepalives_idle") == "32767"  # over TCP
    finally:
        await pool.close()


async def test_a_stream_size_beyond_the_servers_storage_is_refused_naming_the_variable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size a setting may hold is JetStream's int64; the size a server has room for is its
    storage (or the account's), known only when it is asked: the start stops, naming where the
    value was written (was: a ServerError's traceback, err_code 10047)."""
    largest = BOUNDS["stream_max_bytes"].high
    monkeypatch.setenv("JOBRUNNER_STREAM_MAX_BYTES", str(int(largest)))
    too_large = load_settings(
        nats_url=settings.nats_url, database_url=settings.database_url, prefix=settings.prefix
    )
    nc = await eventstore.connect(too_large, "test")
    try:
        with pytest.raises(SettingsError) as raised:
            await eventstore.ensure_topology(nc.jetstream(), Names(too_large.prefix), too_large)
    finally:
        await eventstore.close(nc)
    assert str(raised.value).startswith(
        f"JOBRUNNER_STREAM_MAX_BYTES='{int(largest)}' is more than NATS has room for "
        "(JetStream: insufficient storage resources available): set it within the server's or "
        "the account's JetStream storage"
    )
