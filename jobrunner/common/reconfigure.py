"""Settings that live in JetStream's own configuration, applied again at every start.

A bucket's TTL (the stream's ``max_age``) and a durable consumer's ack wait are set by whoever
creates them. Declaring them again with other values is no error and changes nothing, so a
changed setting (``idempotency_ttl_seconds``, ``notifier_ack_wait_seconds``, the lease TTL the
runners' ack wait follows) would be silently ignored on the next start. Each start compares
what the server holds with the settings and updates it, with a log line saying so: the last
service started wins, so give every instance the same settings.
"""

from __future__ import annotations

import structlog
from nats.js import JetStreamContext, api

from jobrunner.common import retry

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


async def consumer_ack_wait(
    js: JetStreamContext, stream: str, consumer: str, ack_wait: float
) -> None:
    """Give the existing durable ``consumer`` the ack wait ``ack_wait`` (seconds) if it has
    another. Messages it handed out already keep the deadline they were given. A start step:
    its requests wait the start's short timeout (``retry.start_context``)."""
    js = retry.start_context(js)
    info = await js.consumer_info(stream, consumer)
    if info.config.ack_wait is not None and abs(info.config.ack_wait - ack_wait) < _SAME:
        return
    await js.add_consumer(stream, info.config.evolve(ack_wait=ack_wait))
    log.info(
        "consumer ack wait changed to the setting",
        consumer=consumer,
        was=info.config.ack_wait,
        now=ack_wait,
    )
