"""``queue_orphan_seconds`` at its lowest allowed value against the longest gap between a queue
entry and its job's request stored: ``carry_out``'s path (a restart's attempt, a batch's jobs)
writes the entry, then ``publish_many``, whose first copy may be lost and whose resend (after
the 5 s ack wait) has a 5 s publish timeout of its own. Here X's entry is written
(``enqueue_many``, as ``carry_out`` does), C queued behind it, X's first copy swallowed on the
way and its resend held 4.7 s on the wire: X is stored about 9.5 s after its entry. At the
first minimum (7 s) C's runner found X's entry dead and dropped it, and X ran after C."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from jobrunner.common import eventstore
from jobrunner.common.settings import QUEUE_ORPHAN_MIN_SECONDS, Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from tests.dropping_proxy import PublishDroppingProxy
from tests.stalling_proxy import FreezingProxy
from tests.system import System
from tests.tools.runners import RUNNER_TYPES, start_job, wait_status


async def test_an_attempt_stored_late_within_publish_many_keeps_its_queue_place(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    settings = msgspec.structs.replace(
        settings,
        nats_url=own_nats.url,
        job_types_file=RUNNER_TYPES,
        queue_orphan_seconds=QUEUE_ORPHAN_MIN_SECONDS,
    )
    names = Names(settings.prefix)
    order = tmp_path / "order"
    common = {"lockfile": str(tmp_path / "lock"), "order_file": str(order)}
    system = System(settings)
    async with (
        FreezingProxy("127.0.0.1", own_nats.port) as wire,
        PublishDroppingProxy("127.0.0.1", wire.port) as dropping,
    ):
        api = await eventstore.connect(
            msgspec.structs.replace(settings, nats_url=dropping.url()), "review-api"
        )
        try:
            await system.start()
            js = api.jetstream()
            async with system.client() as client:
                a = await start_job(client, "queued", label="a", seconds="16", **common)
                await wait_status(client, a, "running")
                x = events.JobRequested(
                    job_id=events.new_job_id(),
                    job_type="queued",
                    parameters={"label": "x", "seconds": "0.1", **common},
                    lock="sheet",
                    requested_by="anonymous",
                )
                # carry_out: the entry first, then publish_many.
                await SlotTable(js, names, ttl_seconds=30).enqueue_many(
                    "sheet", [(x.job_id, "queued")]
                )
                c = await start_job(client, "queued", label="c", seconds="0.1", **common)
                dropping.drop(names.subject(x), 1)  # the first copy lost on the way
                publishing = asyncio.create_task(eventstore.publish_many(js, names, [x]))
                await asyncio.sleep(eventstore.ACK_WAIT_SECONDS - 0.5)
                wire.freeze(0)  # the resend, sent at 5 s, held on the wire
                await asyncio.sleep(4.7)
                wire.thaw(0)
                await asyncio.wait_for(publishing, 30)  # stored: publish_many succeeded
                assert dropping.dropped == 1
                for job in (a, x.job_id, c):
                    await wait_status(client, job, "completed", "failed", timeout=60)
        finally:
            await eventstore.close(api)
            await system.stop()
    assert order.read_text().split() == ["a", "x", "c"], "X lost its queue place"
