"""The projector: follows the whole event stream on a durable consumer and writes read models."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import msgspec
import structlog
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from contracts import codec, events
from contracts.names import Names
from jobrunner import database, eventstore
from jobrunner.settings import Settings
from services.projector import store
from services.projector.projections import Change, project

log = structlog.get_logger()

FETCH_BATCH = 2000
# Batches are also bounded by bytes: 2000 LineLogged messages of 1000 lines each would hold
# ~260 MB of payload (and several times that decoded) in one transaction.
FETCH_MAX_BYTES = 8 * 1024 * 1024
PRUNE_INTERVAL = 600.0  # seconds between read-model retention runs


async def run_projector(settings: Settings, stop: asyncio.Event) -> None:
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "projector")
    js = nc.jetstream()
    pool = await database.create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        await eventstore.ensure_topology(js, names, settings)
        async with pool.acquire() as conn:
            await store.create_schema(conn)
            last = await store.checkpoint(conn)
        # The durable consumer is created at the checkpoint; afterwards the checkpoint in
        # Postgres stays the authority and anything at or below it is skipped.
        await _reset_consumer_if_behind(js, names, last)
        sub = await _subscribe(js, names, last)
        # A new consumer's first message is the next one the stream holds, whatever its number.
        trust_next = True
        log.info("projector started", checkpoint=last)
        encoder = msgspec.json.Encoder()
        next_prune = 0.0
        fetch_size = 100  # until the size of the stream's messages is known
        while not stop.is_set():
            if settings.readmodel_retention_days > 0 and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL
                cutoff = datetime.now(UTC) - timedelta(days=settings.readmodel_retention_days)
                async with pool.acquire() as conn:
                    pruned = await store.prune(conn, cutoff)
                if pruned:
                    log.info("read-model retention pruned jobs", jobs=pruned, before=cutoff)
            try:
                msgs = await sub.fetch(fetch_size, timeout=1.0)
            except TimeoutError:  # nats' own and asyncio's
                continue
            if not msgs:
                continue
            first = msgs[0].metadata.sequence.stream
            if first > last + 1 and not trust_next:
                # Messages went missing (a reconnect drops deliveries in flight, and acking a
                # later one would acknowledge them too): start again after the checkpoint.
                log.warning("projector missed events, restarting", checkpoint=last, got=first)
                await sub.unsubscribe()
                await js.delete_consumer(names.stream, names.projector_consumer)
                sub = await _subscribe(js, names, last)
                trust_next = True
                continue
            trust_next = False
            # The next fetch takes as many messages as FETCH_MAX_BYTES holds at this size.
            size = sum(len(msg.data) for msg in msgs)
            fetch_size = max(1, min(FETCH_BATCH, FETCH_MAX_BYTES * len(msgs) // max(size, 1)))
            batch: list[tuple[int, list[Change]]] = []
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                try:
                    event = codec.decode(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    # A malformed message must not stop the read models: skip it, loudly.
                    log.error("undecodable event skipped", stream_seq=seq, error=str(exc))
                    event = None
                batch.append((seq, project(event, seq) if event is not None else []))
            async with pool.acquire() as conn:
                last = await store.apply_batch(conn, batch)
            await msgs[-1].ack()
            await nc.publish(names.projected_subject, encoder.encode(events.ProjectedNotice(last)))
    finally:
        await pool.close()
        await eventstore.close(nc)


async def _subscribe(
    js: JetStreamContext, names: Names, checkpoint: int
) -> JetStreamContext.PullSubscription:
    """Bind to the durable consumer, creating it right after ``checkpoint`` if it is missing."""
    return await js.pull_subscribe(
        names.all_subjects,
        durable=names.projector_consumer,
        stream=names.stream,
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.ALL,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=checkpoint + 1,
            max_ack_pending=FETCH_BATCH * 4,
            ack_wait=60,
        ),
    )


async def _reset_consumer_if_behind(js: JetStreamContext, names: Names, checkpoint: int) -> None:
    """Start the durable consumer right after the checkpoint when it is anywhere else.

    A projector killed mid-batch leaves deliveries unacknowledged that JetStream would only
    redeliver after ``ack_wait``; one killed between commit and ack leaves the ack floor behind;
    a rebuilt or emptied database puts the checkpoint behind the ack floor. In each case the
    consumer is recreated at ``checkpoint + 1``: no gap, no wait, and no duplicate (anything at
    or below the checkpoint is skipped anyway). Run one active projector per installation.
    """
    try:
        info = await js.consumer_info(names.stream, names.projector_consumer)
    except NotFoundError:
        return
    if (
        info.ack_floor is not None
        and info.ack_floor.stream_seq == checkpoint
        and not info.num_ack_pending
    ):
        return
    log.info(
        "projector consumer restarts at the checkpoint",
        checkpoint=checkpoint,
        ack_floor=info.ack_floor.stream_seq if info.ack_floor else None,
        ack_pending=info.num_ack_pending,
    )
    await js.delete_consumer(names.stream, names.projector_consumer)
