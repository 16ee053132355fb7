"""Every service declares its JetStream topology at start, and in a deployment several start at
the same moment (compose, the supervisor, a cluster's nodes): the event stream and its consumer
limit, the lock, heartbeat, Idempotency-Key, token and pending artifact purges buckets, the
artifacts object store and its consumer limit and max age, the runners' and the notifiers'
durable consumers. Here every one of those start-up paths runs at once, several copies each on
connections of their own, some on a link with latency, on a fresh nats-server with a fresh
deployment each time, and each must succeed and leave the configuration the settings ask for;
then against a server restarted holding all of it as an older configuration made it."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NamedTuple

import pytest
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from jobrunner.common import artifactstore, eventstore, retry
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from tests.latency_proxy import latency_proxy
from tests.servers import delete_streams
from tests.tools.service_starts import STARTS, assert_configured, settings_for

COPIES = 3  # of each service: the first and the third on this host, the second on another
# The other host's link, each way. A start there takes each step a round trip of this later:
# between finding a bucket missing and creating it, one here has time to create it and change
# it. The starts here begin this much later round after round, from 0 to past the whole of a
# start there, so that one round is sure to put their steps inside that gap (all at the same
# moment, every copy takes each step together and meets no race).
LATENCY_SECONDS = 0.002
SWEEP_STEP_SECONDS = LATENCY_SECONDS  # the gap is two of them wide
# The sweep's end at most: a start there alone takes ~0.15 s on an idle machine. On a loaded one
# it can take seconds (a request waiting out its timeout), and a sweep that long would be
# thousands of rounds, each slower too.
LONGEST_SWEEP_SECONDS = 0.2


class Hosts(NamedTuple):
    near: list[NATS]  # connections of the copies on this host
    far: list[NATS]  # on the other host, LATENCY_SECONDS away


@asynccontextmanager
async def two_hosts(server: EmbeddedNats) -> AsyncIterator[Hosts]:
    """One connection per start (its prefix does not matter to a connection)."""
    far_copies = COPIES // 2
    async with latency_proxy("127.0.0.1", server.port, LATENCY_SECONDS) as far_url:
        near, far = await asyncio.gather(
            connections(server.url, (COPIES - far_copies) * len(STARTS)),
            connections(far_url, far_copies * len(STARTS)),
        )
        try:
            yield Hosts(near, far)
        finally:
            await asyncio.gather(*(eventstore.close(nc) for nc in near + far))


async def connections(url: str, count: int) -> list[NATS]:
    settings = Settings(nats_url=url)
    return list(
        await asyncio.gather(*(eventstore.connect(settings, "start") for _ in range(count)))
    )


async def start_all_at_once(hosts: Hosts, settings: Settings, near_delay: float = 0.0) -> None:
    """Every service's start-up on each connection (the starts here ``near_delay`` seconds
    after those on the other host); every one must succeed."""

    async def start(i: int, nc: NATS, delay: float) -> None:
        await asyncio.sleep(delay)
        await STARTS[i % len(STARTS)](nc.jetstream(), nc, settings)

    near = [start(i, nc, near_delay) for i, nc in enumerate(hosts.near)]
    far = [start(i, nc, 0.0) for i, nc in enumerate(hosts.far)]
    results = await asyncio.gather(*near, *far, return_exceptions=True)
    names = [STARTS[i % len(STARTS)].__name__ for i in range(len(near))]
    names += [f"{STARTS[i % len(STARTS)].__name__} (far)" for i in range(len(far))]
    failed = [
        f"{name}: {result!r} {getattr(result, 'description', '')}"
        for name, result in zip(names, results, strict=True)
        if isinstance(result, BaseException)
    ]
    assert not failed, f"starting {near_delay:.3f} s after the far ones: {failed}"


async def far_start_seconds(hosts: Hosts, url: str, tmp_path: Path) -> float:
    """How long the starts on the other host take alone (the sweep's end)."""
    settings = settings_for(url, f"t{uuid.uuid4().hex[:10]}", tmp_path)
    began = time.monotonic()
    await start_all_at_once(Hosts([], hosts.far), settings)
    took = time.monotonic() - began
    await delete_streams(url, settings.prefix)
    return took


async def test_services_starting_at_once_on_a_fresh_server(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        async with two_hosts(server) as hosts:
            sweep = await far_start_seconds(hosts, server.url, tmp_path)
            sweep = min(sweep, LONGEST_SWEEP_SECONDS)
            for step in range(math.ceil(sweep / SWEEP_STEP_SECONDS) + 1):
                # A fresh deployment each time: nothing of it exists yet.
                prefix = f"t{step}x{uuid.uuid4().hex[:8]}"
                settings = settings_for(server.url, prefix, tmp_path)
                await start_all_at_once(hosts, settings, step * SWEEP_STEP_SECONDS)
                await assert_configured(hosts.near[0], settings)
                await delete_streams(server.url, prefix)  # the server stays small
    finally:
        server.stop()


async def test_services_starting_at_once_after_a_restart_with_older_settings(
    tmp_path: Path,
) -> None:
    """The server comes back holding everything as an earlier configuration made it (other
    limits, TTLs and ack waits); the services, started at once with the new one, apply it."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        older = settings_for(
            server.url,
            prefix,
            tmp_path,
            stream_max_consumers=123,
            stream_max_age_days=1.0,
            lease_ttl_seconds=5.0,
            runner_heartbeat_seconds=4.0,
            idempotency_ttl_seconds=300.0,
            notifier_ack_wait_seconds=20.0,
        )
        async with two_hosts(server) as hosts:
            await start_all_at_once(hosts, older)
            await assert_configured(hosts.near[0], older)
        server.stop()
        server.start()
        newer = settings_for(server.url, prefix, tmp_path)
        async with two_hosts(server) as hosts:
            await start_all_at_once(hosts, newer)
            await assert_configured(hosts.near[0], newer)
    finally:
        server.stop()


async def test_a_stream_not_found_right_after_its_creation_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a cluster the node that answers may not have applied a stream's creation yet: a
    meta leader just elected says "stream not found" for the artifacts bucket the start had
    just created (seen in CI: the runner exited). Here the bucket is made missing by deleting
    it right after its creation, once; the start declares it again and succeeds."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    created = artifactstore.ensure_bucket
    removed: list[str] = []

    async def created_then_gone(js: JetStreamContext, names: Names, settings: Settings) -> None:
        await created(js, names, settings)
        if not removed:
            removed.append(artifactstore.stream_name(names))
            await js.delete_stream(artifactstore.stream_name(names))

    monkeypatch.setattr(artifactstore, "ensure_bucket", created_then_gone)
    try:
        settings = settings_for(server.url, f"t{uuid.uuid4().hex[:10]}", tmp_path)
        nc = await eventstore.connect(settings, "start")
        try:
            await eventstore.ensure_topology(nc.jetstream(), Names(settings.prefix), settings)
            assert removed, "the bucket was never made missing"
            bucket = (await nc.jetstream().stream_info(removed[0])).config
        finally:
            await eventstore.close(nc)
        assert bucket.max_consumers == settings.stream_max_consumers
        assert bucket.max_age == pytest.approx(settings.stream_max_age_days * 86400)
    finally:
        server.stop()


# The grace the tests give a stream, bucket or consumer not found (retry.NOT_FOUND_GRACE_SECONDS)
NOT_FOUND_GRACE = 2.0


@pytest.mark.parametrize(
    ("missing_for", "waited_for"),
    # Tried again at most retry.LONGEST_WAIT apart: missing past the grace plus that, one try
    # is sure to fall past the grace and find it missing still.
    [(NOT_FOUND_GRACE - 1.0, True), (NOT_FOUND_GRACE + retry.LONGEST_WAIT + 0.5, False)],
    ids=["shorter", "longer"],
)
async def test_a_bucket_missing_after_the_declaration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing_for: float, waited_for: bool
) -> None:
    """The runner's lock bucket not found right after the start declared it (in a cluster:
    the node that answers has not applied the creation yet; here it is deleted, then created
    again from another connection ``missing_for`` seconds later). Missing for less than the
    grace, the runner's step waits for it and opens it; for longer, the step says so and
    raises, so that the service exits and its whole start, declaration included, runs again."""
    monkeypatch.setattr(retry, "NOT_FOUND_GRACE_SECONDS", NOT_FOUND_GRACE)
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        settings = settings_for(server.url, f"t{uuid.uuid4().hex[:10]}", tmp_path)
        names = Names(settings.prefix)
        runner, other = await connections(server.url, 2)
        try:
            await eventstore.ensure_topology(runner.jetstream(), names, settings)
            await other.jetstream().delete_stream(f"KV_{names.locks_bucket}")

            async def declared_again_later() -> None:
                await asyncio.sleep(missing_for)
                await eventstore.ensure_topology(other.jetstream(), names, settings)

            declaring = asyncio.create_task(declared_again_later())
            slots = SlotTable(runner.jetstream(), names, settings.lease_ttl_seconds)
            with structlog.testing.capture_logs() as logs:
                try:
                    await retry.until_jetstream_ready(slots.kv, "the lock bucket")
                except BucketNotFoundError:
                    opened = False
                else:
                    opened = True
            await declaring
            events = [entry["event"] for entry in logs]
            assert "waiting for JetStream" in events
            assert opened == waited_for, events
            assert ("still not found: the start begins again" in events) != waited_for, events
            if opened:
                await (await slots.kv()).put("probe", b"1")  # the bucket there now
        finally:
            await asyncio.gather(eventstore.close(runner), eventstore.close(other))
    finally:
        server.stop()


SLOW_ONE_WAY = 0.55  # a round trip a little over retry.START_REQUEST_TIMEOUT


async def test_a_start_over_a_link_slower_than_its_request_timeout_completes(
    tmp_path: Path,
) -> None:
    """Every answer takes a little more than the start's first request timeout (a far-away
    cluster, one slowed by load): the timeout doubles after each try that timed out, so the
    start completes (with a fixed 1 s it sent every request again for ever)."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        async with latency_proxy("127.0.0.1", server.port, SLOW_ONE_WAY) as url:
            settings = settings_for(url, f"t{uuid.uuid4().hex[:10]}", tmp_path)
            nc = await eventstore.connect(Settings(nats_url=url), "start")
            try:
                await asyncio.wait_for(
                    eventstore.ensure_topology(nc.jetstream(), Names(settings.prefix), settings),
                    60,
                )
            finally:
                await eventstore.close(nc)
    finally:
        server.stop()
