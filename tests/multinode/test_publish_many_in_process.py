"""``publish_many`` on an R3 stream whose followers are behind: the leader has the batch's
events staged but cannot store them (no quorum), so their acks come late, not never.

The awaited event's ack wait runs out and it is published again; JetStream refuses that copy
with 10158 ("duplicate message id is in process") while its first copy is still being applied.
That is no failure: the first copy's ack is waited for (``_stored_again``), for at most the ack
wait once more. When the first copy can no longer answer (its own publish already refused with
10158, a copy of an earlier attempt being applied), the event is asked after again every 0.2 s,
within the same bound. And the rest of the batch, applied just behind it, is answered within the
shared wait of ``_resend_unanswered``: none of it published again.

Three nats-server nodes of the test's own (``tests/cluster.py``'s ``ClusterNode``; no Postgres,
no services), the stream on all three, the test's client on the stream's leader. The followers
are frozen (SIGSTOP) before the publish and thawed after a chosen delay."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import nats.js.errors
import pytest
from nats.js import JetStreamContext

from jobrunner.common import ackinbox, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import codec, events
from jobrunner.contracts.names import Names
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from tests.cluster import NODE_NAMES, REPLICAS, ClusterNode, all_of, leader_with_current_replicas
from tests.faults.cluster import in_thread
from tests.tools.restartable_nats import progress

pytestmark = pytest.mark.timeout(180)

# The pipeline's ack wait in these tests: the awaited event is published again after it, and
# its first copy waited for at most as long again (the bound of the wait this file tests).
WAIT = 2.0
PREFIX = "inprocess"


class Nodes:
    """Three nodes forming a JetStream cluster; the event stream on all three."""

    def __init__(self, nodes: list[ClusterNode]) -> None:
        self.nodes = nodes
        self.names = Names(PREFIX)

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    async def leader(self) -> ClusterNode:
        """The stream's leader, once every replica is current (a test freezes the others)."""
        nc = await nats.connect([node.url for node in self.nodes])
        try:
            js = nc.jetstream(timeout=2)
            async with asyncio.timeout(60):
                while True:
                    leader = await leader_with_current_replicas(js, self.names.stream)
                    if leader is not None:
                        return self.node(leader)
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    with scratch_dir("jobrunner-test-inprocess-") as root:
        route_ports = [free_port() for _ in NODE_NAMES]
        started = [
            ClusterNode(name, root / "nodes", route_ports, route_port)
            for name, route_port in zip(NODE_NAMES, route_ports, strict=True)
        ]
        try:
            await all_of(*(in_thread(node.start) for node in started))
            cluster = Nodes(started)
            nc = await nats.connect([node.url for node in started])
            try:
                settings = Settings(prefix=PREFIX, stream_replicas=REPLICAS)
                config = eventstore.stream_config(cluster.names, settings)
                async with asyncio.timeout(60):
                    while True:  # until JetStream has a meta leader and places the stream
                        try:
                            await nc.jetstream(timeout=2).add_stream(config)
                            break
                        except Exception:
                            await asyncio.sleep(0.2)
            finally:
                await nc.close()
            yield cluster
        finally:
            for node in started:
                node.resume()
            await all_of(*(in_thread(node.stop) for node in started))


class Sends:
    """How many times each event went out: in the pipeline (``_send_pipelined``) and alone
    (``publish_acked``: the awaited event's copy, asked again while JetStream applies it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pipelined: collections.Counter[str] = collections.Counter()
        self.alone: collections.Counter[str] = collections.Counter()
        self.refused_in_process = 0
        # Set when an event of the pipeline is sent alone (its ack wait ran out).
        self.pipelined_sent_alone = asyncio.Event()
        send_pipelined, publish_acked = eventstore._send_pipelined, eventstore.publish_acked

        async def counting_pipelined(inbox: Any, names: Names, event: Any) -> Any:
            self.pipelined[event.event_id] += 1
            return await send_pipelined(inbox, names, event)

        async def counting_alone(js: Any, names: Names, event: Any, *args: Any) -> Any:
            self.alone[event.event_id] += 1
            if self.pipelined[event.event_id]:
                self.pipelined_sent_alone.set()
            try:
                return await publish_acked(js, names, event, *args)
            except nats.js.errors.APIError as exc:
                if exc.err_code == eventstore.DUPLICATE_IN_PROCESS:
                    self.refused_in_process += 1
                raise

        monkeypatch.setattr(eventstore, "_send_pipelined", counting_pipelined)
        monkeypatch.setattr(eventstore, "publish_acked", counting_alone)

    def sent_again(self) -> set[str]:
        """The events sent more than once, whichever way."""
        total = self.pipelined + self.alone
        return {event_id for event_id, count in total.items() if count > 1}


async def _stored(js: JetStreamContext, names: Names) -> int:
    return (await js.stream_info(names.stream)).state.messages


async def _batch_with_followers_frozen(
    cluster: Nodes, batch: list[events.ProgressReported], thaw: Awaitable[Any]
) -> tuple[JetStreamContext, asyncio.Task[int], float]:
    """Freeze the leader's followers, start ``publish_many`` of ``batch`` on the leader, thaw
    them once ``thaw`` is done (a sleep from when the publish began, or a moment of the
    publish's own): the publish's task, its JetStream context (for reading the stream) and
    when it began."""
    leader = await cluster.leader()
    nc = await eventstore.connect(Settings(nats_url=leader.url, prefix=PREFIX), "test")
    js = nc.jetstream(timeout=WAIT)
    await eventstore.publish(js, cluster.names, progress("warm", 0))  # the inbox subscribed
    followers = [node for node in cluster.nodes if node is not leader]
    for node in followers:
        node.pause()
    began = time.monotonic()
    task = asyncio.create_task(eventstore.publish_many(js, cluster.names, batch))
    await thaw
    for node in followers:
        node.resume()
    return js, task, began


async def test_the_awaited_events_copy_refused_in_process_waits_for_the_first(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The followers thawed after the ack wait ran out and the copy was refused (10158), within
    the wait for the first copy that follows: the batch is stored, each event once."""
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", WAIT)
    sends = Sends(monkeypatch)
    batch = [progress("awaited", 1)]
    js, task, _ = await _batch_with_followers_frozen(nodes, batch, asyncio.sleep(2 * WAIT - 0.8))
    seq = await asyncio.wait_for(task, 30)
    assert sends.refused_in_process >= 1, "the copy was not refused in process: no 10158 seen"
    # REVIEW: the first copy's own ack answered the wait: the event was not asked after again.
    assert sends.alone[batch[0].event_id] == 1, sends.alone
    assert seq == 2  # the warm-up event, then this one
    assert await _stored(js, nodes.names) == 2
    await js._nc.close()


async def test_a_first_copy_still_in_process_past_the_bound_fails_the_publish(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The followers thawed just after the bound (the ack wait, then as long again for the
    first copy): the publish fails with the copy's 10158, which ``stored_nothing`` calls an
    unknown outcome, and the first copy is stored once the stream catches up."""
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", WAIT)
    sends = Sends(monkeypatch)
    batch = [progress("awaited", 1)]
    js, task, began = await _batch_with_followers_frozen(
        nodes, batch, asyncio.sleep(2 * WAIT + 0.8)
    )
    with pytest.raises(nats.js.errors.APIError) as raised:
        await asyncio.wait_for(task, 30)
    failed_after = time.monotonic() - began
    assert raised.value.err_code == eventstore.DUPLICATE_IN_PROCESS
    assert failed_after >= 2 * WAIT, f"failed {failed_after:.2f} s in, before the bound"
    assert not eventstore.stored_nothing(raised.value)
    assert sends.alone[batch[0].event_id] >= 2, "asked once more at the bound"
    async with asyncio.timeout(30):
        while await _stored(js, nodes.names) < 2:  # noqa: ASYNC110  # the server's state: poll
            await asyncio.sleep(0.1)
    assert await _stored(js, nodes.names) == 2
    await js._nc.close()


BACKLOG = 2000


async def test_a_backlogs_late_acks_are_taken_in_the_shared_wait_without_a_resend_each(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 2,000 staged behind frozen followers: once they thaw the stream applies them
    in order, the awaited event first. Its first copy's ack ends its wait; the other events'
    acks come while the stream applies them, within the one shared wait: none of them is
    published again (a resend at once would meet most of them still being applied). Each is
    stored once."""
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", WAIT)
    sends = Sends(monkeypatch)
    batch = [progress(f"backlog{i}", i) for i in range(BACKLOG)]
    # Thawed once the awaited event's wait ran out and it was sent again, not at a time from
    # the publish's start: sending 2,000 events first may take longer than the margin on a
    # loaded machine, and a thaw within the wait answers every ack at once (none sent again).
    js, task, _ = await _batch_with_followers_frozen(
        nodes, batch, sends.pipelined_sent_alone.wait()
    )
    seq = await asyncio.wait_for(task, 60)
    assert sends.sent_again() == {batch[0].event_id}, (
        f"{len(sends.sent_again())} events sent again; only the awaited one should be"
    )
    assert seq == BACKLOG + 1
    assert await _stored(js, nodes.names) == BACKLOG + 1
    await js._nc.close()


async def _published_behind_an_earlier_copy(
    cluster: Nodes, event: events.ProgressReported, thaw_after: float
) -> tuple[JetStreamContext, ackinbox.AckInbox, asyncio.Future[Any], asyncio.Task[int], float]:
    """Freeze the leader's followers, publish a first copy of ``event`` outside
    ``publish_many`` (an earlier attempt's, say a runner's retry after a restart: staged by the
    leader, its ack not come), then start ``publish_many`` of ``event`` alone, whose own
    pipelined copy is refused with 10158 at once; thaw the followers ``thaw_after`` seconds
    after it began. Returns the context, the inbox, the earlier copy's future, the publish's
    task and when it began."""
    leader = await cluster.leader()
    nc = await eventstore.connect(Settings(nats_url=leader.url, prefix=PREFIX), "test")
    js = nc.jetstream(timeout=WAIT)
    await eventstore.publish(js, cluster.names, progress("warm", 0))  # the inbox subscribed
    inbox = ackinbox.of(nc)
    followers = [node for node in cluster.nodes if node is not leader]
    for node in followers:
        node.pause()
    earlier = await inbox.publish_pipelined(
        cluster.names.subject(event), codec.encode(event), codec.headers(event)
    )
    await asyncio.sleep(0.2)  # the earlier copy staged by the leader before the next comes
    began = time.monotonic()
    task = asyncio.create_task(eventstore.publish_many(js, cluster.names, [event]))
    # Thawed in the back: the publish may end before the thaw (past the bound), and when it
    # ends is what the test measures.
    asyncio.get_running_loop().call_later(thaw_after, _resume, followers)
    return js, inbox, earlier, task, began


def _resume(nodes: list[ClusterNode]) -> None:
    for node in nodes:
        node.resume()


async def test_a_copy_refused_while_an_earlier_attempts_is_applied_is_asked_after_again(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``publish_many``'s own copy refused with 10158 (an earlier attempt's copy still being
    applied): its future answered, no ack of it can come, so the event is asked after again
    every 0.2 s; the followers thawed within the bound, an ask is answered a duplicate: stored
    once, and no entry left in the ack inbox."""
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", WAIT)
    sends = Sends(monkeypatch)
    event = progress("awaited", 1)
    js, inbox, earlier, task, _ = await _published_behind_an_earlier_copy(
        nodes, event, thaw_after=WAIT - 0.8
    )
    seq = await asyncio.wait_for(task, 30)
    assert sends.alone[event.event_id] >= 2, "not asked after again in the 0.2 s loop"
    assert seq == 2  # the warm-up event, then this one
    assert await _stored(js, nodes.names) == 2
    earlier.cancel()
    assert inbox._timed == {}, inbox._timed
    assert inbox._waiting == {}, inbox._waiting
    await js._nc.close()


async def test_an_earlier_attempts_copy_still_applied_past_the_bound_fails_the_publish(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, the followers thawed just past the bound of the 0.2 s loop (the ack wait):
    the publish fails with the last ask's 10158, no sooner than the bound, and the earlier copy
    is stored once the stream catches up; no entry left in the ack inbox."""
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", WAIT)
    event = progress("awaited", 1)
    js, inbox, earlier, task, began = await _published_behind_an_earlier_copy(
        nodes, event, thaw_after=WAIT + 0.8
    )
    with pytest.raises(nats.js.errors.APIError) as raised:
        await asyncio.wait_for(task, 30)
    failed_after = time.monotonic() - began
    assert raised.value.err_code == eventstore.DUPLICATE_IN_PROCESS
    assert failed_after >= WAIT, f"failed {failed_after:.2f} s in, before the bound"
    async with asyncio.timeout(30):
        while await _stored(js, nodes.names) < 2:  # noqa: ASYNC110  # the server's state: poll
            await asyncio.sleep(0.1)
    assert await _stored(js, nodes.names) == 2
    earlier.cancel()
    assert inbox._timed == {}, inbox._timed
    await js._nc.close()
