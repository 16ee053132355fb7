"""Settings that live in JetStream's own configuration, applied again at every start.

A bucket's TTL (the stream's ``max_age``) and a durable consumer's ack wait (with the rest of
what its service depends on: ``durable_consumer``) are set by whoever creates them. Declaring
them again with other values is no error and changes nothing, so a changed setting
(``idempotency_ttl_seconds``, ``notifier_ack_wait_seconds``, the lease TTL the runners' ack wait
follows) would be silently ignored on the next start. Each start compares what the server holds
with the settings and updates it, with a log line saying so: the last service started wins, so
give every instance the same settings. So also across versions: during a rolling upgrade the
runners' consumer's ack wait is the last runner started's (twice the lease TTL before session 30,
one TTL since); the short wait holds once every runner is upgraded.
"""

from __future__ import annotations

from typing import Any

import structlog
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from jobrunner.common import retry
from jobrunner.common.refusal import StateRefused

log = structlog.get_logger()

# The server stores durations in nanoseconds; nats-py hands them back as float seconds.
_SAME = 1e-6

# nats-py's own cap on a bucket's duplicate window (it must not exceed the bucket's max age).
_KV_DUPLICATE_WINDOW = 120.0


async def bucket_ttl(js: JetStreamContext, bucket: api.StreamInfo, ttl: float) -> None:
    """Give the existing KV bucket (its stream's ``bucket`` info) the TTL ``ttl`` (seconds) if
    it was made with another."""
    was = bucket.config.max_age
    if was is not None and abs(was - ttl) < _SAME:
        return
    config = bucket.config.evolve(max_age=ttl, duplicate_window=min(_KV_DUPLICATE_WINDOW, ttl))
    await js.update_stream(config)
    log.info("bucket TTL changed to the setting", bucket=config.name, was=was, now=ttl)


class ConsumerUnusable(StateRefused):
    """A shared durable consumer made with what JetStream cannot change and the service cannot
    work with: deleting it is the remedy, so the service refuses to start (``REFUSED_EXIT``)."""

    code = "consumer_unusable"

    def __init__(self, stream: str, consumer: str, reason: str) -> None:
        super().__init__(
            f"{self.code}: the durable consumer {consumer} of stream {stream} {reason}, which "
            f"JetStream cannot change: delete it (nats consumer rm {stream} {consumer}) and "
            f"start again; the service makes it anew"
        )


async def durable_consumer(
    js: JetStreamContext, stream: str, consumer: str, wanted: api.ConsumerConfig
) -> None:
    """Make the existing durable ``consumer`` what ``wanted`` asks where the service depends on
    it (there is none yet: whoever creates it gives it ``wanted``).

    An older jobrunner, an operator or a changed setting may have left it otherwise, and the
    service would bind to it without a word: another filter (requests never delivered, or
    other events handed out), a bounded ``max_deliver`` (a waiting request dropped after a few
    deliveries), another ``max_ack_pending`` (requests held back) or ack wait. JetStream lets
    those change: updated, logged. A consumer that pushes instead of being pulled, or does not
    take explicit acks, cannot be changed: ``ConsumerUnusable``. A start step: its requests
    wait the start's short timeout (``retry.start_context``)."""
    js = retry.start_context(js)
    try:
        info = await js.consumer_info(stream, consumer)
    except NotFoundError:
        return
    have = info.config
    if have.deliver_subject:
        raise ConsumerUnusable(stream, consumer, "pushes to a deliver subject, not pulled")
    if have.ack_policy != wanted.ack_policy:
        raise ConsumerUnusable(
            stream,
            consumer,
            f"has ack policy {_value(have.ack_policy)!r}, not {_value(wanted.ack_policy)!r}",
        )
    was, now = _updatable(have), _updatable(wanted)
    changed = [field for field in now if not _equal(was[field], now[field])]
    if not changed:
        return
    await js.add_consumer(
        stream,
        have.evolve(
            filter_subject=wanted.filter_subject,
            filter_subjects=wanted.filter_subjects,
            ack_wait=wanted.ack_wait,
            max_deliver=wanted.max_deliver,
            max_ack_pending=wanted.max_ack_pending,
        ),
    )
    log.info(
        "consumer changed to the setting",
        consumer=consumer,
        was={field: was[field] for field in changed},
        now={field: now[field] for field in changed},
    )


def _updatable(config: api.ConsumerConfig) -> dict[str, Any]:
    """What ``durable_consumer`` keeps as wanted, in the server's defaults (no limit: -1)."""
    filters = config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])
    return {
        "filter_subjects": sorted(filters),
        "ack_wait": config.ack_wait,
        "max_deliver": config.max_deliver or -1,
        "max_ack_pending": config.max_ack_pending or -1,
    }


def _equal(was: Any, now: Any) -> bool:
    if isinstance(was, int | float) and isinstance(now, int | float):
        return abs(was - now) < _SAME
    return bool(was == now)


def _value(policy: Any) -> str:
    return str(getattr(policy, "value", policy))
