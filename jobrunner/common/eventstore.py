"""The JetStream side shared by every service: connect, declare the stream, publish events."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.client import ServerVersion
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError

from jobrunner.common import artifactstore, reconfigure, retry, runnerpool
from jobrunner.common.natsconnection import NatsConnection, server_urls
from jobrunner.common.refusal import StateRefused
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names

log = structlog.get_logger()

__all__ = ["server_urls"]  # kept here too: callers name it eventstore.server_urls

# JetStream de-duplicates a re-published event id within this window (seconds).
DUPLICATE_WINDOW = 120.0


async def connect(settings: Settings, name: str, **options: Any) -> NATS:
    """Connect with reconnects forever: NATS restarts must not kill a service."""

    async def on_disconnect() -> None:
        if not nc.is_closed:  # our own close() is no news
            log.warning("nats disconnected", service=name)

    async def on_reconnect() -> None:
        log.info("nats reconnected", service=name)

    async def on_error(exc: Exception) -> None:
        # A timeout's message is empty: name its type instead of logging a blank reason.
        log.warning("nats error", service=name, error=str(exc) or type(exc).__name__)

    nc = NATS()
    await nc.connect(
        **NatsConnection.from_settings(settings).nats_py_options(),
        name=f"jobrunner-{name}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,  # type: ignore[arg-type]  # seconds, a float is fine
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        **options,
    )
    return nc


def stream_config(names: Names, settings: Settings) -> api.StreamConfig:
    return api.StreamConfig(
        name=names.stream,
        subjects=[names.all_subjects],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=settings.stream_max_age_days * 86400 or None,
        max_bytes=settings.stream_max_bytes or None,
        # Always set: without it the server applies its own default (1,000 consumers on 2.15)
        # while the config still says -1, and a burst of viewers catching up meets it.
        max_consumers=settings.stream_max_consumers,
        num_replicas=settings.stream_replicas,
        duplicate_window=DUPLICATE_WINDOW,
        allow_direct=True,
        metadata={names.contract_metadata_key: str(events.CONTRACT_VERSION)},
    )


def recorded_contract(names: Names, metadata: dict[str, str] | None) -> int:
    """The contract version a stream's metadata records; 1 when it records none (a stream
    created before versions were recorded, or by another tool) or an unreadable one."""
    value = (metadata or {}).get(names.contract_metadata_key, "1")
    # Plain ASCII digits only (int() would also take "+2", " 2", "2_0", other scripts' digits),
    # and no more than a version could have.
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else 1


def check_contract(names: Names, metadata: dict[str, str] | None) -> None:
    """Refuse a stream whose events follow a newer contract than this jobrunner reads."""
    recorded = recorded_contract(names, metadata)
    if recorded > events.CONTRACT_VERSION:
        raise StateRefused(
            f"the event stream {names.stream} holds events of contract version {recorded}, "
            f"written by a newer jobrunner; this one reads up to version "
            f"{events.CONTRACT_VERSION}: run the newer version"
        )


async def ensure_topology(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """Create (or update to the configured limits) the event stream, the lock bucket, the
    runner heartbeat bucket, the Idempotency-Key bucket and the artifacts bucket.

    Every service does this at start, several at once in a cluster: each step is idempotent
    (creating what exists with the same configuration succeeds), and while the cluster forms or
    a node is down the whole declaration is tried again until JetStream accepts it."""
    await retry.until_jetstream_ready(
        lambda: _declare_topology(js, names, settings), "the event stream and its buckets"
    )


# nats-server lets an existing stream's MaxConsumers change from 2.12 on (nats-server PR
# #7724); 2.10 and 2.11 refuse the whole update ("can not change MaxConsumers").
CONSUMER_LIMIT_CHANGEABLE_FROM = (2, 12)


def can_change_consumer_limit(version: ServerVersion) -> bool:
    """Whether the server ``version`` lets a stream's ``max_consumers`` change; an unknown
    version is tried (a refusal is met by ``refuses_consumer_limit_change``)."""
    try:
        known = (version.major, version.minor)
    except ValueError:
        return True
    return known == (0, 0) or known >= CONSUMER_LIMIT_CHANGEABLE_FROM


def refuses_consumer_limit_change(exc: BaseException) -> bool:
    """The server's refusal of a stream update because it changes MaxConsumers (< 2.12)."""
    return isinstance(exc, BadRequestError) and "MaxConsumers" in (exc.description or "")


def keeping_consumer_limit(
    config: api.StreamConfig, existing: api.StreamConfig
) -> api.StreamConfig:
    """``config`` with the existing stream's consumer limit, so that the other settings still
    apply on a server that cannot change it."""
    log.warning(
        "the event stream's consumer limit stays at its old value: this nats-server cannot "
        "change it (2.12 or later can; or recreate the stream)",
        kept=existing.max_consumers,
        setting=config.max_consumers,
    )
    return dataclasses.replace(config, max_consumers=existing.max_consumers)


async def _update_stream(
    js: JetStreamContext, config: api.StreamConfig, existing: api.StreamConfig | None
) -> None:
    """Update the event stream to ``config``. On a server older than 2.12 the existing
    stream's ``max_consumers`` is kept rather than the update refused: a refusal would stop
    every service at start, for good."""
    changes_limit = existing is not None and existing.max_consumers != config.max_consumers
    if (
        existing is not None
        and changes_limit
        and not can_change_consumer_limit(js._nc.connected_server_version)
    ):
        config = keeping_consumer_limit(config, existing)
        changes_limit = False
    try:
        await js.update_stream(config)
    except BadRequestError as exc:
        if existing is None or not refuses_consumer_limit_change(exc):
            raise
        config = keeping_consumer_limit(config, existing)
        changes_limit = False
        await js.update_stream(config)
    if existing is not None and changes_limit:
        # A stream made before the setting (the server's default of 1,000) or with another.
        log.info(
            "event stream consumer limit changed to the setting",
            was=existing.max_consumers,
            now=config.max_consumers,
        )


async def _declare_topology(js: JetStreamContext, names: Names, settings: Settings) -> None:
    config = stream_config(names, settings)
    existing: api.StreamConfig | None = None
    with contextlib.suppress(nats.js.errors.NotFoundError):  # none yet: created below
        existing = (await js.stream_info(names.stream)).config
        check_contract(names, existing.metadata)
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if retry.is_forming(exc):
            raise  # no room for the replicas yet (a node is missing): not a changed config
        await _update_stream(js, config, existing)
    try:
        await js.stream_info(f"KV_{names.locks_bucket}")
    except nats.js.errors.NotFoundError:
        await js.create_key_value(
            bucket=names.locks_bucket,
            history=1,
            storage=api.StorageType.FILE,
            replicas=settings.stream_replicas,
            # Leases carry their own TTL; an expired one leaves a marker that runners watch
            # to declare the job's runner lost.
            limit_marker_ttl=max(60.0, settings.lease_ttl_seconds * 4),
        )
    try:
        runners = await js.stream_info(f"KV_{names.runners_bucket}")
    except nats.js.errors.NotFoundError:
        await js.create_key_value(
            bucket=names.runners_bucket,
            history=1,
            storage=api.StorageType.MEMORY,  # heartbeats are worth nothing after a restart
            replicas=settings.stream_replicas,
            ttl=runnerpool.heartbeat_ttl(settings),
        )
    else:
        await reconfigure.bucket_ttl(js, runners, runnerpool.heartbeat_ttl(settings))
    try:
        idempotency = await js.stream_info(f"KV_{names.idempotency_bucket}")
    except nats.js.errors.NotFoundError:
        await js.create_key_value(
            bucket=names.idempotency_bucket,
            history=1,
            storage=api.StorageType.FILE,  # a retry after a NATS restart must still find its key
            replicas=settings.stream_replicas,
            ttl=settings.idempotency_ttl_seconds,
        )
    else:
        await reconfigure.bucket_ttl(js, idempotency, settings.idempotency_ttl_seconds)
    await artifactstore.ensure_bucket(js, names, settings)


async def publish(js: JetStreamContext, names: Names, event: events.Publishable) -> int:
    """Publish one event and wait for JetStream to store it; returns its stream sequence."""
    return (await publish_acked(js, names, event)).seq


async def publish_acked(
    js: JetStreamContext,
    names: Names,
    event: events.Publishable,
    expected_last: int | None = None,
) -> api.PubAck:
    """As ``publish``, with JetStream's whole answer (``duplicate``: its id was stored before).
    ``expected_last``: stored only if the stream sequence of the last message on the event's
    subject is that (0: the subject holds none), else JetStream refuses it (an ``APIError`` with
    ``err_code`` ``WRONG_LAST_SEQUENCE``); its id is checked for a duplicate first."""
    return await js.publish(
        names.subject(event), codec.encode(event), headers=headers(event, expected_last)
    )


# JetStream's error code for a publish whose Nats-Expected-Last-Subject-Sequence did not hold.
WRONG_LAST_SEQUENCE = 10071
EXPECTED_LAST_HEADER = "Nats-Expected-Last-Subject-Sequence"


def headers(event: events.Publishable, expected_last: int | None = None) -> dict[str, str]:
    """An event's headers, with the condition on its subject's last sequence if given."""
    out = codec.headers(event)
    if expected_last is not None:
        out = {**out, EXPECTED_LAST_HEADER: str(expected_last)}
    return out


# How long publish_many waits for one pipelined ack before publishing that event again.
ACK_WAIT_SECONDS = 5.0


async def publish_many(
    js: JetStreamContext, names: Names, batch: Sequence[events.Publishable]
) -> int:
    """Publish in a pipeline and wait for every ack; returns the last stream sequence.

    An ack lost on the way (NATS restarted meanwhile) is not waited for forever: that event is
    published again with the same id, which JetStream stores once and answers with its sequence.
    """
    acks = await _pipelined(js, names, batch)
    return acks[-1].seq if acks else 0


async def _pipelined(
    js: JetStreamContext, names: Names, batch: Sequence[events.Publishable]
) -> list[api.PubAck]:
    """Each event's ack, published in a pipeline (see ``publish_many``)."""
    futures = [
        await js.publish_async(names.subject(e), codec.encode(e), headers=codec.headers(e))
        for e in batch
    ]
    acks: list[api.PubAck] = []
    for event, future in zip(batch, futures, strict=True):
        try:
            acks.append(await asyncio.wait_for(future, ACK_WAIT_SECONDS))
        except Exception as exc:
            log.warning("pipelined publish unconfirmed, publishing again", error=repr(exc))
            acks.append(await publish_acked(js, names, event))
    return acks


async def publish_many_acked(
    js: JetStreamContext,
    names: Names,
    batch: Sequence[tuple[events.Publishable, int | None]],
) -> list[api.PubAck | None]:
    """As ``publish_many``, each event with its condition on its subject's last sequence (see
    ``publish_acked``): each one's ack, None where its condition did not hold.

    The events without a condition go in one pipeline; those with one after them (so after
    every event before them too), at once as requests: nats-py never completes a pipelined
    publish's future that JetStream refused (its reply handler raises), so a refusal there
    would cost the whole ack wait and a publish again."""
    out: list[api.PubAck | None] = [None] * len(batch)
    plain = [i for i, (_, expected) in enumerate(batch) if expected is None]
    plain_acks = await _pipelined(js, names, [batch[i][0] for i in plain])
    for i, ack in zip(plain, plain_acks, strict=True):
        out[i] = ack
    conditional = [i for i, (_, expected) in enumerate(batch) if expected is not None]
    acks = await asyncio.gather(*(_conditional(js, names, *batch[i]) for i in conditional))
    for i, conditional_ack in zip(conditional, acks, strict=True):
        out[i] = conditional_ack
    return out


async def _conditional(
    js: JetStreamContext, names: Names, event: events.Publishable, expected: int | None
) -> api.PubAck | None:
    """``publish_acked`` on its condition, once more if unanswered (as ``publish_many``): stored
    the first time, the second is answered a duplicate, its id checked before the condition."""
    try:
        return await unless_wrong_last(publish_acked(js, names, event, expected))
    except nats.errors.TimeoutError as exc:
        log.warning("publish unconfirmed, publishing again", error=repr(exc))
        return await unless_wrong_last(publish_acked(js, names, event, expected))


Ack = TypeVar("Ack")


async def unless_wrong_last(acked: Awaitable[Ack]) -> Ack | None:
    """The ack of a publish conditional on its subject's last message; None when JetStream
    refused it because something was stored there since (``WRONG_LAST_SEQUENCE``)."""
    try:
        return await acked
    except APIError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            return None
        raise


async def close(nc: NATS) -> None:
    """Flush what we sent, then close. (``drain`` would wait on watchers nobody reads any more.)"""
    try:
        if nc.is_connected:
            await nc.flush(timeout=2)
    except Exception as exc:
        log.warning("nats flush on close failed", error=repr(exc))
    await nc.close()
