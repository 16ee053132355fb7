"""``publish_many``'s pipeline when a run of its publishes is lost and the connection stays up
(a stream electing a leader drops what it gets meanwhile, answering nothing): the awaited
event's ack wait runs out once, then, after one shared wait for the rest's acks, every event
still unanswered is published again together. Waiting it once per lost event, a batch POST of
10,000 jobs would answer after hours."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobrunner.common import ackinbox, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from tests.dropping_proxy import PublishDroppingProxy
from tests.tools.restartable_nats import progress

WAIT = 2.0  # long enough for a real ack on a loaded machine: one more wait fails the test
BATCH = 40


@pytest.mark.parametrize(
    ("lost", "after"),
    [(1, 0), (BATCH // 2, 0), (BATCH, 0), (BATCH // 4, BATCH // 2)],
    ids=["one", "half", "all", "a-run-in-the-middle"],
)
async def test_a_batch_whose_publishes_are_lost_resends_them_together_and_stores_each_once(
    own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch, lost: int, after: int
) -> None:
    monkeypatch.setattr(ackinbox, "ACK_TIMEOUT", WAIT)
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", WAIT)
    async with PublishDroppingProxy("127.0.0.1", own_nats.port) as proxy:
        settings = Settings(nats_url=proxy.url(), prefix="pipelost")
        names = Names(settings.prefix)
        nc = await eventstore.connect(settings, "test")
        try:
            js = nc.jetstream(timeout=WAIT)
            await eventstore.ensure_topology(js, names, settings)
            await eventstore.publish(js, names, progress("warm", 0))  # the inbox subscribed
            waited_out = 0
            original = eventstore.publish_acked

            async def counting(*args: Any, **kwargs: Any) -> Any:
                nonlocal waited_out  # publish_acked is the loop's resend after a wait ran out
                waited_out += 1
                return await original(*args, **kwargs)

            monkeypatch.setattr(eventstore, "publish_acked", counting)
            batch = [progress(f"lost{i}", i) for i in range(BATCH)]
            proxy.drop(names.subject(batch[0]).rsplit(".", 2)[0], lost, after)

            acks = await asyncio.wait_for(
                eventstore.publish_many_acked(js, names, [(e, None) for e in batch]), 60
            )

            assert proxy.dropped == lost
            assert waited_out == 1, f"the ack wait ran out {waited_out} times for {lost} lost"
            info = await js.stream_info(names.stream)
            assert info.state.messages == BATCH + 1  # the warm-up's and each event's, once
            for event, ack in zip(batch, acks, strict=True):  # each ack in its event's place
                msg = await js.get_last_msg(names.stream, names.subject(event))
                assert msg.data == codec.encode(event)
                assert ack is not None
                assert ack.seq == msg.seq
        finally:
            await eventstore.close(nc)


async def test_a_batch_answers_the_highest_sequence_it_stored(
    own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first event lost and published again is stored after the last: waiting for the
    batch's last event in the read models would not wait for it (``publish_many``'s caller
    waits for the sequence it answers)."""
    monkeypatch.setattr(ackinbox, "ACK_TIMEOUT", WAIT)
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", WAIT)
    async with PublishDroppingProxy("127.0.0.1", own_nats.port) as proxy:
        settings = Settings(nats_url=proxy.url(), prefix="pipelast")
        names = Names(settings.prefix)
        nc = await eventstore.connect(settings, "test")
        try:
            js = nc.jetstream(timeout=WAIT)
            await eventstore.ensure_topology(js, names, settings)
            batch = [progress(f"last{i}", i) for i in range(5)]
            proxy.drop(names.subject(batch[0]), 1)

            last = await asyncio.wait_for(eventstore.publish_many(js, names, batch), 60)

            first = await js.get_last_msg(names.stream, names.subject(batch[0]))
            assert last == first.seq == (await js.stream_info(names.stream)).state.last_seq
        finally:
            await eventstore.close(nc)
