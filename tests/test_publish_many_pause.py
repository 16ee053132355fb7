"""``publish_many``'s pipeline through a NATS pause either side of its ack wait: every event
stored once, and at most the event being waited for when the wait ran out published again (the
others' acks come once NATS runs again; had every ack's wait counted from its send, every event
of the batch would be published again, one round trip after another)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from jobrunner.common import ackinbox, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import frozen
from tests.tools.restartable_nats import progress

WAIT = 1.0
BATCH = 40


@pytest.mark.parametrize(
    ("paused_for", "most_sent_again"),
    [(WAIT * 0.5, 0), (WAIT * 1.5, 2)],
    ids=["shorter", "longer"],
)
async def test_publish_many_through_a_pause_either_side_of_the_ack_wait(
    settings: Settings,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    paused_for: float,
    most_sent_again: int,
) -> None:
    monkeypatch.setattr(ackinbox, "ACK_TIMEOUT", WAIT)
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", WAIT)
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    nc = await eventstore.connect(settings, "review")
    try:
        js = nc.jetstream(timeout=WAIT)
        names = Names(settings.prefix)
        await eventstore.ensure_topology(js, names, settings)
        await eventstore.publish(js, names, progress("warm", 0))  # the inbox subscribed
        republished = 0
        original = eventstore.publish_acked

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal republished
            republished += 1
            return await original(*args, **kwargs)

        monkeypatch.setattr(eventstore, "publish_acked", counting)
        batch = [progress(f"paused{i}", i) for i in range(BATCH)]
        assert own_nats.proc is not None
        with frozen(own_nats.proc.pid):
            sending = asyncio.create_task(eventstore.publish_many(js, names, batch))
            await asyncio.sleep(paused_for)
        await asyncio.wait_for(sending, 60)
        for event in batch:
            msg = await js.get_last_msg(names.stream, names.subject(event))
            assert msg.data == codec.encode(event)
        assert republished <= most_sent_again, f"{republished} of {BATCH} published again"
    finally:
        await eventstore.close(nc)
