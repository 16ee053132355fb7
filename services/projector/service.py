"""The projector: follows the whole event stream on a durable consumer and writes read models."""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api

from contracts import codec
from contracts.names import Names
from jobrunner import database, eventstore
from jobrunner.settings import Settings
from services.projector import store
from services.projector.projections import Change, project

log = structlog.get_logger()

FETCH_BATCH = 2000


class ProjectedNotice(msgspec.Struct):
    """Sent on ``Names.projected_subject`` after each commit (not persisted)."""

    last_seq: int


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
        sub = await js.pull_subscribe(
            names.all_subjects,
            durable=names.projector_consumer,
            stream=names.stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.ALL,
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=last + 1,
                max_ack_pending=FETCH_BATCH * 4,
                ack_wait=60,
            ),
        )
        log.info("projector started", checkpoint=last)
        encoder = msgspec.json.Encoder()
        while not stop.is_set():
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
            except NatsTimeoutError:
                continue
            if not msgs:
                continue
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
            await nc.publish(names.projected_subject, encoder.encode(ProjectedNotice(last)))
    finally:
        await pool.close()
        await eventstore.close(nc)
