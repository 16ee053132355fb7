"""The JetStream side shared by every service: connect, declare the stream, publish events."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.client import ServerVersion
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError

from jobrunner.common import (
    ackinbox,
    artifactpurges,
    artifactstore,
    messagesize,
    reconfigure,
    retry,
    runnerpool,
    serverversion,
    stopping,
    subscription,
)
from jobrunner.common.logging import LogThrottle
from jobrunner.common.natsconnection import NatsConnection, server_urls
from jobrunner.common.refusal import StateRefused
from jobrunner.common.settings import (
    EVENTS_DUPLICATE_WINDOW_SECONDS,
    Settings,
    SettingsError,
    sources_of,
)
from jobrunner.common.settingsrefusal import written
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names

log = structlog.get_logger()

__all__ = ["server_urls"]  # kept here too: callers name it eventstore.server_urls

# JetStream de-duplicates a re-published event id within this window (seconds); the event
# stream's shortest max age (settings, stream_max_age_days).
DUPLICATE_WINDOW = EVENTS_DUPLICATE_WINDOW_SECONDS


# The exit status of a service whose NATS connection nats-py closed for good (below).
NATS_CLOSED_EXIT = 75  # EX_TEMPFAIL: try again (the supervisor and compose's `restart:` do)


class ServiceClient(NATS):
    """nats-py's client, knowing whether its close was asked for (``close()``, ``drain()`` or
    the end of ``async with`` by our code) or nats-py's own: a server ``-ERR`` it treats as fatal
    (any but a stale connection or a permissions violation: an oversized control line or
    message, an authorization violation after a password change, an expired user JWT, ...).
    nats-py also closes itself when its reconnect attempts run out, but ``connect`` below never
    lets them run out."""

    closed_on_request = False

    async def close(self) -> None:
        self.closed_on_request = True
        await super().close()

    async def drain(self) -> None:
        # Ours only once the drain starts: a refused one (closed, or reconnecting) leaves the
        # connection to whatever closes it later, which may be nats-py giving up on it.
        if not (self.is_closed or self.is_connecting or self.is_reconnecting):
            self.closed_on_request = True
        await super().drain()

    async def __aexit__(self, *exc_info: object) -> None:
        # nats-py's __aexit__ calls _close() directly, not close(): mark it as ours here too.
        self.closed_on_request = True
        await super().__aexit__(*exc_info)


def exit_for_good(connection: str, reason: str) -> None:
    """End the process now, non-zero, as a crash would: nothing of the service's stop runs.

    A connection nats-py closed stays closed, and everything bound to it (subscriptions,
    consumers, KV and object store handles, the runner's lease and heartbeat) with it; a
    service without it would look alive for ever. A fresh process is the one recovery that
    rebinds all of it, and the way it ends is the crash path every service already survives:
    the runner's guardian kills its tools, its leases run out and its jobs end RUNNER_LOST;
    the projector and notifier resume from what they acknowledged. A graceful stop would wait
    on that dead connection (a runner's drain cannot publish)."""
    log.critical(
        "nats connection closed for good: exiting so that the service is restarted",
        connection=connection,
        reason=reason,
        exit_status=NATS_CLOSED_EXIT,
    )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(NATS_CLOSED_EXIT)


def log_closed_for_good(connection: str, reason: str) -> None:
    """For a service run inside another program (the tests' in-process services): say it, and
    leave the process alone; the service's next NATS call raises ``ConnectionClosedError``."""
    log.critical("nats connection closed for good", connection=connection, reason=reason)


# What a long-running service does when nats-py closes its connection for good. A service
# process ends (exit_for_good); a program that runs services inside itself (the test suite)
# sets this to log_closed_for_good, so that one closed connection does not end the program.
closed_for_good_action: Callable[[str, str], None] = exit_for_good

ClosedForGood = Literal["exit", "raise"]

# One `nats error` line per this many seconds per connection, with how many were left out
# (a refused connect is tried 4 times a second).
ERROR_LOG_INTERVAL = 10.0


class ErrorLog:
    """Logs nats-py's errors of one connection, at most one line per ``interval`` seconds."""

    def __init__(self, connection: str, interval: float = ERROR_LOG_INTERVAL) -> None:
        # The connection's name (``connect``), not the ``service=`` every line of a service
        # carries (bound in ``cli``): a service has more than one (the API's reader).
        self.connection = connection
        self.throttle = LogThrottle(interval)

    def __call__(self, exc: Exception) -> None:
        left_out = self.throttle.admit()
        if left_out is None:
            return
        # A timeout's message is empty: name its type instead of logging a blank reason.
        error = str(exc) or type(exc).__name__
        if left_out:
            log.warning("nats error", connection=self.connection, error=error, since_last=left_out)
        else:
            log.warning("nats error", connection=self.connection, error=error)


async def connect(
    settings: Settings,
    name: str,
    on_closed_for_good: ClosedForGood = "raise",
    errors: Callable[[Exception], None] | None = None,
    **options: Any,
) -> NATS:
    """Connect with reconnects forever: NATS restarts must not kill a service.

    nats-py's errors are logged by ``errors`` when given (a caller whose attempts each open a
    connection throttles them across its attempts), else at most once per
    ``ERROR_LOG_INTERVAL`` for this connection (``ErrorLog``).

    A connection nats-py closes for good (see ServiceClient) stays closed. ``"exit"``, for the
    long-running services: ``closed_for_good_action`` (the process ends with status 75 and its
    supervisor starts it again). ``"raise"``, for commands and tools: nothing more is done, and
    their next NATS call raises ``ConnectionClosedError``, so that they end as on any error."""

    async def on_disconnect() -> None:
        if not nc.is_closed:  # our own close() is no news
            log.warning("nats disconnected", connection=name)

    async def on_reconnect() -> None:
        # The ordered consumers (our readers, nats-py's KV watches) whose consumers the server
        # lost open again at once, not after nats-py's own check finds their heartbeats missing
        # (``reopen_after_reconnect``).
        checking = subscription.reopen_after_reconnect(nc)
        # A publish whose ack the drop lost (a job's lines, an event, a lock bucket write) is
        # sent again by its caller now, not after its ack timeout (``AckInbox.reconnected``).
        ackinbox.reconnected(nc)
        log.info("nats reconnected", connection=name, consumers_checked=checking)

    said = errors or ErrorLog(name)

    async def on_error(exc: Exception) -> None:
        # A reader whose messages nats-py dropped reads them again (``lost_messages``). Called
        # inside nats-py's read loop: an error escaping here would stop the connection reading.
        try:
            subscription.lost_messages(exc)
        except Exception as error:
            log.exception("reader not told of its lost messages", error=repr(error))
        said(exc)

    async def on_closed() -> None:
        if nc.closed_on_request:
            return
        error = nc.last_error
        reason = (str(error) or type(error).__name__) if error else "unknown"
        if on_closed_for_good == "exit":
            closed_for_good_action(name, reason)
        else:
            log.error("nats connection closed for good", connection=name, reason=reason)

    nc = ServiceClient()
    await nc.connect(
        **NatsConnection.from_settings(settings).nats_py_options(),
        name=f"jobrunner-{name}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,  # type: ignore[arg-type]  # seconds, a float is fine
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        closed_cb=on_closed,
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


# JetStream's refusal of a stream whose max_bytes is more than its storage can reserve.
NO_STORAGE_FOR_STREAM = 10047


async def ensure_topology(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """Create (or update to the configured limits) the event stream, the lock bucket, the
    runner heartbeat bucket, the Idempotency-Key bucket and the artifacts bucket.

    Every service does this at start, several at once in a cluster: each step is idempotent
    (creating what exists with the same configuration succeeds), and while the cluster forms or
    a node is down the whole declaration is tried again until JetStream accepts it. A
    nats-server older than jobrunner needs stops it first (``NatsServerTooOld``): trying again
    would not help."""
    try:
        serverversion.require_supported(js._nc.connected_server_version)
    except serverversion.NatsServerTooOld as exc:
        log.critical("nats-server too old", code=exc.code, found=exc.found, needed=exc.needed)
        raise
    try:
        await retry.until_jetstream_ready(
            lambda: _declare_visible_topology(retry.start_context(js), names, settings),
            "the event stream and its buckets",
        )
    except APIError as exc:
        if exc.err_code == NO_STORAGE_FOR_STREAM and settings.stream_max_bytes > 0:
            where = sources_of(settings).get("stream_max_bytes")
            raw = settings.stream_max_bytes
            said = written("stream_max_bytes", raw, where, "is more than NATS has room for")
            raise SettingsError(
                f"{said} (JetStream: insufficient storage resources available): set it within "
                "the server's or the account's JetStream storage (the server's max_file_store, "
                "the account's limits in operator mode or on a hosted NATS), or 0 for no limit"
            ) from None
        raise


async def _declare_visible_topology(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """The declaration, with a stream it finds missing after creating it (or finding its name
    in use) tried again rather than raised: every "not found" it expects is handled inside,
    by creating what is missing, so one that escapes is a cluster still applying a creation."""
    try:
        await _declare_topology(js, names, settings)
    except nats.js.errors.NotFoundError as exc:
        raise retry.NotYetVisible(f"a stream just declared is not found yet: {exc}") from exc


async def durable_pull_subscription(
    js: JetStreamContext, subject: str, stream: str, durable: str, config: api.ConsumerConfig
) -> JetStreamContext.PullSubscription:
    """nats-py's ``pull_subscribe`` for a shared durable consumer, as a start step: the look and
    the create wait the start's short request timeout (a consumer just created by another
    service starting at the same moment answers nothing until its replicas elect a leader), the
    subscription returned uses ``js``. Errors are the caller's to retry."""
    starting = retry.start_context(js)
    try:
        await starting.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        config = dataclasses.replace(
            config, name=durable, durable_name=durable, filter_subject=subject
        )
        await starting.add_consumer(stream, config=config)
    return await js.pull_subscribe_bind(durable=durable, stream=stream)


# nats-server lets an existing stream's MaxConsumers change from 2.12.5 on (nats-server PR
# #7724, also in 2.14.0); earlier ones refuse the whole update ("can not change MaxConsumers").
CONSUMER_LIMIT_CHANGEABLE_FROM = (2, 12, 5)


def can_change_consumer_limit(version: ServerVersion) -> bool:
    """Whether the server ``version`` lets a stream's ``max_consumers`` change; an unknown
    version is tried (a refusal is met by ``refuses_consumer_limit_change``)."""
    try:
        known = (version.major, version.minor, version.patch)
    except ValueError:
        return True
    return known == (0, 0, 0) or known >= CONSUMER_LIMIT_CHANGEABLE_FROM


def refuses_consumer_limit_change(exc: BaseException) -> bool:
    """The server's refusal of a stream update because it changes MaxConsumers (< 2.12.5).
    It comes as a 500 (``JSStreamInvalidConfigF``, err_code 10052; wrapped in
    ``JSStreamUpdateErrF`` in a cluster), which nats-py raises as ``ServerError``: any
    ``APIError`` naming MaxConsumers."""
    return isinstance(exc, APIError) and "MaxConsumers" in (exc.description or "")


def keeping_consumer_limit(
    config: api.StreamConfig, existing: api.StreamConfig, what: str = "event stream"
) -> api.StreamConfig:
    """``config`` with the existing stream's consumer limit, so that the other settings still
    apply on a server that cannot change it."""
    log.warning(
        f"the {what}'s consumer limit stays at its old value: this nats-server cannot "
        "change it (2.12.5 or later can; or recreate the stream)",
        kept=existing.max_consumers,
        setting=config.max_consumers,
    )
    return dataclasses.replace(config, max_consumers=existing.max_consumers)


async def _update_stream(
    js: JetStreamContext,
    config: api.StreamConfig,
    existing: api.StreamConfig | None,
    what: str = "event stream",
) -> None:
    """Update the stream (the ``what``) to ``config``. On a server older than 2.12.5 the
    existing stream's ``max_consumers`` is kept rather than the update refused: a refusal would
    stop every service at start, for good."""
    changes_limit = existing is not None and existing.max_consumers != config.max_consumers
    if (
        existing is not None
        and changes_limit
        and not can_change_consumer_limit(js._nc.connected_server_version)
    ):
        config = keeping_consumer_limit(config, existing, what)
        changes_limit = False
    try:
        await js.update_stream(config)
    except APIError as exc:
        if existing is None or not refuses_consumer_limit_change(exc):
            raise
        config = keeping_consumer_limit(config, existing, what)
        changes_limit = False
        await js.update_stream(config)
    if existing is not None and changes_limit:
        # A stream made before the setting (the server's default of 1,000) or with another.
        log.info(
            f"{what} consumer limit changed to the setting",
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
        await create_runners_bucket(js, names, settings)
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
    await _bucket_limits(js, names, settings)
    await artifactpurges.ensure_bucket(js, names, settings)


async def create_runners_bucket(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """The runners' heartbeat bucket. In memory: heartbeats are worth nothing after a restart,
    and a restarted server has lost the bucket with them (the runners make it again)."""
    await js.create_key_value(
        bucket=names.runners_bucket,
        history=1,
        storage=api.StorageType.MEMORY,
        replicas=settings.stream_replicas,
        ttl=runnerpool.heartbeat_ttl(settings),
    )


async def _bucket_limits(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """The artifacts bucket's stream gets the event stream's consumer limit and max age.

    The consumer limit: every download reads through a consumer of it and every ZIP archive
    holds two or more (its guards and its reads), and an object store's config sets none (the
    server's default: 1,000 on 2.15). The max age: artifacts last as long as the events that
    name them, so a changed ``stream_max_age_days`` reaches the bucket too, not only the
    bucket created after it (the event stream's is updated at every start)."""
    existing = (await js.stream_info(artifactstore.stream_name(names))).config
    max_age = settings.stream_max_age_days * 86400
    same_age = abs((existing.max_age or 0.0) - max_age) < 1e-6
    if existing.max_consumers == settings.stream_max_consumers and same_age:
        return
    config = existing.evolve(max_consumers=settings.stream_max_consumers)
    if not same_age:
        # JetStream refuses a duplicate window longer than the max age.
        window = existing.duplicate_window or DUPLICATE_WINDOW
        config = config.evolve(
            max_age=max_age, duplicate_window=min(window, max_age) if max_age else window
        )
    await _update_stream(js, config, existing, what="artifacts bucket")
    if not same_age:
        log.info(
            "artifacts bucket max age changed to the setting", was=existing.max_age, now=max_age
        )


async def publish(js: JetStreamContext, names: Names, event: events.Publishable) -> int:
    """Publish one event and wait for JetStream to store it; returns its stream sequence."""
    return (await publish_acked(js, names, event)).seq


async def publish_acked(
    js: JetStreamContext,
    names: Names,
    event: events.Publishable,
    expected_last: int | None = None,
) -> ackinbox.PubAck:
    """As ``publish``, with JetStream's whole answer (``duplicate``: its id was stored before).
    ``expected_last``: stored only if the stream sequence of the last message on the event's
    subject is that (0: the subject holds none), else JetStream refuses it (an ``APIError`` with
    ``err_code`` ``WRONG_LAST_SEQUENCE``); its id is checked for a duplicate first."""
    data, extra = codec.encode(event), headers(event, expected_last)
    # Through the connection's ack inbox (the message ``js.publish`` sends, its errors, the
    # context's ack timeout), so that an ack a NATS restart lost fails at once and the caller's
    # retry sends it again now, not after the timeout (``AckInbox.reconnected``). The inbox
    # checks the size: the server would close the connection for a message over max_payload.
    inbox = ackinbox.of(js._nc)
    return await inbox.publish_headed(names.subject(event), data, extra, js._timeout)


# JetStream's refusal of a message whose Nats-Msg-Id a clustered stream is still applying.
DUPLICATE_IN_PROCESS = 10158


def stored_nothing(exc: BaseException) -> bool:
    """Whether a publish (``publish``, ``publish_acked``: one send) that raised ``exc`` surely
    stored nothing: JetStream answered it with a refusal (``APIError``), no stream answered it
    (``NoStreamResponseError``: nothing takes its subject, or its stream has no leader just
    now; ``ackinbox.read_ack`` turns the server's 503 into it), or it was never sent. nats-py
    raises these before it writes anything (its ``publish``, and the ack inbox's ``subscribe``,
    check first): over max_payload; on a connection closed for good (``ConnectionClosedError``:
    one that closes with the publish in flight fails it as a timeout, not as this); on one being
    drained (``ConnectionDrainingError``: a service stopping); and while reconnecting with its
    buffer for the new connection full (``OutboundBufferLimitError``: NATS away a while). Any
    other failure leaves the outcome unknown: a timeout (NATS paused past the ack wait, and may
    store the message once it runs again), an ack lost with the connection
    (``AckLostWithConnection``: a NATS restart after it stored the message, or before), and
    JetStream's 10158 (an R3 stream still applying a copy with the same id: a
    request sent again while its first copy is on its way, which may yet be stored). Not for
    ``publish_many``, which sends an unanswered event again: its error may be the second send's,
    after the first was stored."""
    if isinstance(exc, APIError) and exc.err_code == DUPLICATE_IN_PROCESS:
        return False
    return isinstance(exc, _STORED_NOTHING)


_STORED_NOTHING = (
    APIError,
    NoStreamResponseError,
    nats.errors.MaxPayloadError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
)


def check_fits(js: JetStreamContext, event: events.Publishable) -> None:
    """Raise ``nats.errors.MaxPayloadError`` now, before anything is written, for an event the
    server would refuse as larger than its max_payload (its publish would raise the same)."""
    messagesize.check_fits(js._nc, codec.encode(event), codec.headers(event))


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
    """Publish in a pipeline and wait for every ack; returns the highest stream sequence they
    were stored at (an event published again is stored after the ones sent behind it).

    An ack lost on the way (NATS restarted meanwhile, or a stream without a leader for a moment)
    is not waited for forever: that event is published again with the same id, which JetStream
    stores once and answers with its sequence.
    """
    acks = await _pipelined(js, names, batch)
    return max((ack.seq for ack in acks), default=0)


async def _pipelined(
    js: JetStreamContext, names: Names, batch: Sequence[events.Publishable]
) -> list[ackinbox.PubAck]:
    """Each event's ack, in the batch's order, published in a pipeline (see ``publish_many``)."""
    # Through the ack inbox, as ``publish_acked``: an ack a NATS restart lost fails at once and
    # that event is published again now. A refusal's ack raises here (``read_ack``), and again
    # from ``publish_acked``, the error its caller gets. Each ack waited ACK_WAIT_SECONDS from
    # when its wait begins (``publish_pipelined``): after a pause just past it, only the event
    # being waited for is published again, the others' acks having come meanwhile.
    inbox = ackinbox.of(js._nc)
    futures: list[asyncio.Future[Msg]] = []
    try:
        for event in batch:
            futures.append(await _send_pipelined(inbox, names, event))
        acks: dict[int, ackinbox.PubAck] = {}
        unanswered = collections.deque(range(len(batch)))
        while unanswered:
            i = unanswered.popleft()
            try:
                acks[i] = await _ack_within(futures[i], ACK_WAIT_SECONDS)
            except Exception as exc:
                log.warning("pipelined publish unconfirmed, publishing again", error=repr(exc))
                acks[i] = await _stored_again(js, names, batch[i], futures[i])
                await _resend_unanswered(inbox, names, batch, futures, unanswered)
        return [acks[i] for i in range(len(batch))]
    finally:
        # The acks not awaited (an error or a cancel left the loop early) are abandoned: their
        # futures cancelled (they have no deadline of the inbox's: their entries go with them),
        # a failure already there read, not asyncio's "never retrieved" at exit.
        for future in futures:
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()


async def _ack_within(future: asyncio.Future[Msg], timeout: float) -> ackinbox.PubAck:
    """The pipelined publish's ack, waited for ``timeout`` seconds at most (a
    ``nats.errors.TimeoutError`` then). The future is left as it is, not cancelled: its ack
    may still come, and is the one ``_stored_again`` takes."""
    # On wall time, not ``common.looptime``'s: a loop blocked past the timeout can take an ack
    # already in the socket for missing. Harmless: the event goes out again with the same
    # message id, which the stream's duplicate window drops, and the late ack is still taken;
    # an extra round trip, no lost or doubled event.
    await asyncio.wait((future,), timeout=timeout)
    if not future.done():
        raise nats.errors.TimeoutError
    return ackinbox.read_ack(future.result())


# How long _stored_again waits before it asks again about an event JetStream is still
# applying, when the first copy's ack can no longer come (its future already answered).
IN_PROCESS_RECHECK_SECONDS = 0.2


async def _stored_again(
    js: JetStreamContext,
    names: Names,
    event: events.Publishable,
    first: asyncio.Future[Msg],
) -> ackinbox.PubAck:
    """Publish again an event whose pipelined ack (``first``) did not come in time.

    An R3 stream still applying the first copy (its followers behind, a backlog) refuses the
    copy with 10158 (``DUPLICATE_IN_PROCESS``): the first copy is on its way, and its ack comes
    once it is stored. That refusal is no failure: the first copy's ack is waited for, or,
    when it can no longer come (already answered, or lost with the connection), the event is
    asked after again a moment later, until its copy is answered a duplicate. For at most
    ``ACK_WAIT_SECONDS`` more, plus the last ask's own timeout (``publish_acked``'s, a NATS
    pause during it), then the last copy's answer is the caller's error (an unknown outcome:
    ``stored_nothing`` says so of 10158). Whatever that answer, the first copy's ack, if it
    came meanwhile, is taken instead."""
    deadline = time.monotonic() + ACK_WAIT_SECONDS
    while True:
        try:
            return await publish_acked(js, names, event)
        except Exception as exc:
            if _acked(first):  # the first copy's ack came meanwhile: the event is stored
                return ackinbox.read_ack(first.result())
            left = deadline - time.monotonic()
            if not isinstance(exc, APIError) or exc.err_code != DUPLICATE_IN_PROCESS or left <= 0:
                raise
        log.info("publish still being applied by the stream, waiting for it", left=left)
        if first.done():
            await asyncio.sleep(min(IN_PROCESS_RECHECK_SECONDS, left))
        else:
            # Wall time, like ``_ack_within``'s (a blocked loop asks again: same id, no harm).
            await asyncio.wait((first,), timeout=left)
        if _acked(first):
            return ackinbox.read_ack(first.result())


async def _send_pipelined(
    inbox: ackinbox.AckInbox, names: Names, event: events.Publishable
) -> asyncio.Future[Msg]:
    return await inbox.publish_pipelined(
        names.subject(event), codec.encode(event), codec.headers(event)
    )


async def _resend_unanswered(
    inbox: ackinbox.AckInbox,
    names: Names,
    batch: Sequence[events.Publishable],
    futures: list[asyncio.Future[Msg]],
    unanswered: Iterable[int],
) -> None:
    """After an event whose ack did not come was stored again: the acks of the rest get one
    wait together, then every event whose ack is still missing is published again, in one
    pipeline (its new future in ``futures``).

    A run of publishes goes unanswered together: a stream without a leader for a moment drops
    what it gets; a reconnect fails every ack still awaited. Waited for one by one, a batch of
    10,000 such events would wait the ack wait 10,000 times; this way about twice per loss. The
    shared wait is for acks only late (an R3 stream applying a backlog): JetStream refuses a copy
    of an event it is still applying (10158), and answers a stored one's copy a duplicate."""
    waiting = {futures[i] for i in unanswered if not futures[i].done()}
    if waiting:
        await asyncio.wait(waiting, timeout=ACK_WAIT_SECONDS)
    for i in unanswered:
        if not _acked(futures[i]):
            futures[i].cancel()
            futures[i] = await _send_pipelined(inbox, names, batch[i])


def _acked(future: asyncio.Future[Msg]) -> bool:
    """Whether a pipelined publish's answer came and is an ack (not a refusal, not a 503)."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return False
    try:
        ackinbox.read_ack(future.result())
    except Exception:
        return False
    return True


async def publish_many_acked(
    js: JetStreamContext,
    names: Names,
    batch: Sequence[tuple[events.Publishable, int | None]],
) -> list[ackinbox.PubAck | None]:
    """As ``publish_many``, each event with its condition on its subject's last sequence (see
    ``publish_acked``): each one's ack, None where its condition did not hold.

    The events without a condition go in one pipeline; those with one after them (so after
    every event before them too), at once, each waited for on its own: a refusal there is an
    answer (None), not a failure to publish again."""
    out: list[ackinbox.PubAck | None] = [None] * len(batch)
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
) -> ackinbox.PubAck | None:
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


# How long a close waits for the socket to take what nats-py still holds once the flush has
# failed: the kernel takes a few MB at once, a live server the rest in milliseconds. A frozen
# server takes nothing, and nats-py's close then waits in its drain (and for the socket to
# close) with no bound: past this the connection is dropped, and logged.
CLOSE_SECONDS = 5.0


# The flush before the close: its wait for the server's answer. nats-py bounds only that
# wait; the flush first queues its ping for the flusher, and that queue (1,024 places) can be
# full with a frozen server holding the flusher (subscribes and unsubscribes queue there too):
# the whole flush is bounded a second later, and left.
FLUSH_SECONDS = 2.0


# The most a close takes: the flush's bound and a second, then the close's.
CLOSE_MOST_SECONDS = FLUSH_SECONDS + 1 + CLOSE_SECONDS
# What a service's stop keeps for its NATS connections' close, after what still publishes on
# them: the flush's answer (1 s of it), the rest for what the socket still holds.
CLOSE_KEEP_SECONDS = 3.0
# An unsubscribe at a stop: an UNSUB queued, no round trip, so at once on a connection that
# works. Bounded all the same: it asks the flusher too (see FLUSH_SECONDS), and with NATS
# frozen while much was being sent, it waited for NATS.
UNSUBSCRIBE_STOP_SECONDS = 1.0


async def unsubscribe_within(
    subs: Iterable[Subscription], within: float, what: str, *, closing: bool = True
) -> None:
    """Unsubscribe ``subs`` (``what``: for the log) ``within`` seconds at most. ``closing``: at
    a stop, the connection's close follows and ends those left, and their errors are no one's
    to report. Otherwise (an external job's end, the connection staying open) those left are
    a warning: nats-py queues the UNSUB before it waits for the flusher (``_send_command``),
    so it goes out when NATS takes what is queued."""
    left_running = (
        f"{what} not unsubscribed: the close ends them"
        if closing
        else f"{what} not unsubscribed in time: the UNSUB is queued, sent when NATS takes it"
    )
    await stopping.wait_within(
        {asyncio.ensure_future(sub.unsubscribe()) for sub in subs},
        within,
        left_running,
        cancel_left=True,
        errors_retrieved=True,
        level="error" if closing else "warning",
    )


async def close(nc: NATS, within: float | None = None) -> None:
    """Flush what we sent, then close, in ``within`` seconds at most (the flush in half of them
    at most): what a service's stop has left for it, ``CLOSE_MOST_SECONDS`` when not given.
    (``drain`` would wait on watchers nobody reads any more.)"""
    within = CLOSE_MOST_SECONDS if within is None else within
    deadline = stopping.Deadline(within)
    flush_wait = min(FLUSH_SECONDS + 1, within / 2)
    if nc.is_connected and flush_wait > 0:
        # nats-py's own bound a third shorter: a flush past ours never queued its ping.
        # A flush that times out leaves its cancelled future in nats-py's PONG waiters, and a
        # late PONG then ends the read loop (InvalidStateError; bulk.py probes otherwise for
        # that). Harmless here: the close below follows at once, cancels the read loop itself
        # and waits on no read (its flush only writes what is pending).
        answer = min(FLUSH_SECONDS, flush_wait * 2 / 3)
        flushing = asyncio.ensure_future(nc.flush(timeout=answer))  # type: ignore[arg-type]
        done, _ = await asyncio.wait({flushing}, timeout=flush_wait)
        if not done:
            # Its cancel may be swallowed (nats-py's flush queue): the close ends it.
            flushing.cancel()
            flushing.add_done_callback(_unheeded)
            log.warning("nats flush on close failed", error="its ping was never queued")
        elif not flushing.cancelled() and flushing.exception() is not None:
            log.warning("nats flush on close failed", error=repr(flushing.exception()))
    # Not cancelled at its bound: nats-py swallows a cancel while it flushes, and a close cut
    # short would skip its clean-up. The socket's abort ends its wait instead.
    closing = asyncio.ensure_future(nc.close())
    close_wait = deadline.left(CLOSE_SECONDS)
    done, _ = await asyncio.wait({closing}, timeout=close_wait)
    if not done:
        log.error("nats took nothing more: connection dropped", waited=round(close_wait, 3))
        _abort_socket(nc)
    try:
        await closing
    except ConnectionError as exc:
        # The connection was lost under the close (the server killed or restarting, a
        # reconnect under way with publishes buffered): nats-py's close stopped there.
        log.warning("nats connection lost during its close", error=repr(exc))


def _unheeded(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # read: a flush left behind ends in an error nobody waits for


def _abort_socket(nc: NATS) -> None:
    """Drop ``nc``'s socket and what is still buffered for it (nats-py's transport's stream)."""
    writer = getattr(nc._transport, "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None:
        # nats-py's internals changed (tests/test_nats_close_frozen.py reads them too): the
        # close goes on waiting for the socket.
        log.error("nats socket not found to drop: the close may wait for a frozen server")
        return
    transport.abort()
