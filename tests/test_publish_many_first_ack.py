"""``publish_many``'s event unanswered within its ack wait is published again
(``eventstore._stored_again``). When that copy's ask fails, whatever the error, after the
first copy's ack has come, the event is stored: the first copy's place is the answer, not the
ask's error."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from tests.stalling_proxy import connected_through_a_freezing_proxy


async def stored(js: JetStreamContext, names: Names) -> int:
    return (await js.stream_info(names.stream)).state.messages


async def test_a_failed_ask_after_the_first_copys_ack_came_answers_with_the_first_copy(
    settings: Settings, js: JetStreamContext
) -> None:
    """The first copy stored, its ack held on the way back past the ack wait; the copy sent
    again held on its way to the server, so that its ask times out; the first copy's ack let
    through meanwhile. The publish answers with the first copy's place (before the ask's
    answer could come), stored once."""
    names = Names(settings.prefix)
    async with connected_through_a_freezing_proxy(settings, "first-ack") as (nc, proxy):
        publisher = nc.jetstream()
        event = events.ProgressReported(job_id="held-ack", current=1, total=10)
        await eventstore.publish(publisher, names, events.JobRequested(job_id="warm", job_type="t"))
        proxy.hold_replies(0)
        publishing = asyncio.create_task(eventstore.publish_many(publisher, names, [event]))
        async with asyncio.timeout(eventstore.ACK_WAIT_SECONDS):  # before its wait ends
            while await stored(js, names) < 2:  # noqa: ASYNC110 - the server's count, polled
                await asyncio.sleep(0.01)
        proxy.hold_requests(0)  # the copy sent again when the ack wait ends stays here
        async with asyncio.timeout(eventstore.ACK_WAIT_SECONDS + 30):
            while not proxy.held_requests[0]:  # noqa: ASYNC110 - the proxy's count, polled
                await asyncio.sleep(0.01)
        proxy.pass_replies(0)  # the first copy's ack arrives; the copy's ask cannot
        seq = await asyncio.wait_for(publishing, 60)
        assert proxy.request_gates[0].is_set() is False  # answered without the ask's reply
        first = await js.get_last_msg(names.stream, names.subject(event))
        assert seq == first.seq
        assert await stored(js, names) == 2
