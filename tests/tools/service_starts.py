"""Each service's start-up steps on JetStream (the topology it declares, the buckets and
consumers it opens), run in the test's process on a connection of the test's own, so that many
can run at once; the settings a test deployment starts with (none of them a default, so that a
test sees each applied), and a check that everything ended up configured as they ask."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobrunner.common import artifactstore, eventstore, retry, runnerpool
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts.names import Names
from jobrunner.services.api.security.tokens import TokenStore
from jobrunner.services.notifier.service import Notifier
from jobrunner.services.projector import service as projector
from jobrunner.services.runner.service import request_ack_wait, subscribe_requests


def settings_for(url: str, prefix: str, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "nats_url": url,
        "prefix": prefix,
        "state_dir": str(tmp_path / "state"),
        "log_format": "console",
        # None of these is the server's or nats-py's default: the test sees them applied.
        "stream_max_consumers": 321,
        "stream_max_age_days": 2.0,
        "lease_ttl_seconds": 3.0,
        "idempotency_ttl_seconds": 600.0,
        "notifier_ack_wait_seconds": 40.0,
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


Start = Callable[[JetStreamContext, NATS, Settings], Awaitable[None]]


async def api_start(js: JetStreamContext, nc: NATS, settings: Settings) -> None:
    names = Names(settings.prefix)
    await eventstore.ensure_topology(js, names, settings)
    await retry.until_jetstream_ready(
        lambda: TokenStore.open(js, names, settings.stream_replicas, retry.start_context(js)),
        "the token bucket",
    )


async def runner_start(js: JetStreamContext, nc: NATS, settings: Settings) -> None:
    names = Names(settings.prefix)
    await eventstore.ensure_topology(js, names, settings)
    slots = SlotTable(js, names, settings.lease_ttl_seconds)
    await retry.until_jetstream_ready(slots.kv, "the lock bucket")
    ack_wait = request_ack_wait(settings.lease_ttl_seconds)
    sub = await subscribe_requests(js, names, ack_wait)
    await sub.unsubscribe()


async def notifier_start(js: JetStreamContext, nc: NATS, settings: Settings) -> None:
    await eventstore.ensure_topology(js, Names(settings.prefix), settings)
    sub = await Notifier(settings, nc).open_consumer()
    await sub.unsubscribe()


async def projector_start(js: JetStreamContext, nc: NATS, settings: Settings) -> None:
    names = Names(settings.prefix)
    await eventstore.ensure_topology(js, names, settings)
    await projector._remove_durable_consumer(js, names)


STARTS: list[Start] = [api_start, runner_start, notifier_start, projector_start]


async def assert_configured(nc: NATS, settings: Settings) -> None:
    """What the settings ask for, on every stream, bucket and consumer."""
    names = Names(settings.prefix)
    js = nc.jetstream()
    max_age = settings.stream_max_age_days * 86400
    stream = (await js.stream_info(names.stream)).config
    assert stream.max_consumers == settings.stream_max_consumers
    assert stream.max_age == pytest.approx(max_age)
    bucket = (await js.stream_info(artifactstore.stream_name(names))).config
    assert bucket.max_consumers == settings.stream_max_consumers
    assert bucket.max_age == pytest.approx(max_age)
    purges = (await js.stream_info(f"KV_{names.artifact_purges_bucket}")).config
    assert purges.max_age == pytest.approx(max_age)
    assert purges.max_msgs_per_subject == 1
    runners = (await js.stream_info(f"KV_{names.runners_bucket}")).config
    assert runners.max_age == pytest.approx(runnerpool.heartbeat_ttl(settings))
    idempotency = (await js.stream_info(f"KV_{names.idempotency_bucket}")).config
    assert idempotency.max_age == pytest.approx(settings.idempotency_ttl_seconds)
    locks = (await js.stream_info(f"KV_{names.locks_bucket}")).config
    assert locks.max_msgs_per_subject == 1
    tokens = (await js.stream_info(f"KV_{names.tokens_bucket}")).config
    assert tokens.max_msgs_per_subject == 5
    runner = await js.consumer_info(names.stream, names.runner_consumer)
    assert runner.config.ack_wait == pytest.approx(request_ack_wait(settings.lease_ttl_seconds))
    notifier = await js.consumer_info(names.stream, names.notifier_consumer)
    assert notifier.config.ack_wait == pytest.approx(settings.notifier_ack_wait_seconds)
