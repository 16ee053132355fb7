"""Publishing through a connection's ack inbox: stored as js.publish stores it (the Nats-Msg-Id
de-duplicates a repeat), and failing with the errors the runner's retry tells apart."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest
from nats.js import JetStreamContext, api

from jobrunner.common import ackinbox, eventstore, retry, subscription
from jobrunner.common.settings import Settings
from jobrunner.contracts.codec import MSG_ID_HEADER
from jobrunner.contracts.names import Names


async def test_a_publish_is_stored_with_its_id_and_a_repeat_is_a_duplicate(
    js: JetStreamContext, settings: Settings
) -> None:
    """The message is stored with its Nats-Msg-Id; published again, JetStream keeps one copy."""
    names = Names(settings.prefix)
    inbox = ackinbox.of(js._nc)
    subject = names.job_kind_subject("inboxjob", "lines")
    first = await inbox.publish(subject, b'{"hello":1}', "id-1")
    again = await inbox.publish(subject, b'{"hello":1}', "id-1")
    other = await inbox.publish(subject, b'{"hello":2}', "id-2")
    assert (first.stream, first.duplicate) == (names.stream, False)
    assert (again.seq, again.duplicate) == (first.seq, True)
    assert other.seq == first.seq + 1
    stored = await js.get_msg(names.stream, first.seq)
    assert stored.data == b'{"hello":1}'
    assert stored.headers is not None
    assert stored.headers[MSG_ID_HEADER] == "id-1"


async def test_a_subject_no_stream_takes_raises_no_stream_response(
    js: JetStreamContext, settings: Settings
) -> None:
    """With no stream to store it, the publish fails as js.publish's does (a retry waits)."""
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await ackinbox.of(js._nc).publish(f"{settings.prefix}-nostream.x", b"{}", "id-1")


async def test_a_publish_nobody_acknowledges_times_out(
    js: JetStreamContext, settings: Settings
) -> None:
    """A message someone receives but nobody acknowledges fails with a timeout (retried)."""
    subject = f"{settings.prefix}-silent.x"
    await js._nc.subscribe(subject)  # receives, never answers
    inbox = ackinbox.AckInbox(js._nc, timeout=0.2)
    with pytest.raises(nats.errors.TimeoutError):
        await inbox.publish(subject, b"{}", "id-1")
    # The inbox still works afterwards.
    stored = await inbox.publish(
        Names(settings.prefix).job_kind_subject("inboxjob", "lines"), b"{}", "id-2"
    )
    assert stored.seq > 0


async def test_jetstream_refusing_a_message_raises_its_api_error(
    js: JetStreamContext, settings: Settings
) -> None:
    """JetStream's refusal (here a message over the stream's size limit) raises its APIError."""
    subject = f"{settings.prefix}-small.x"
    await js.add_stream(
        api.StreamConfig(name=f"{settings.prefix}_small", subjects=[subject], max_msg_size=16)
    )
    try:
        with pytest.raises(nats.js.errors.APIError):
            await ackinbox.of(js._nc).publish(subject, b"x" * 100, "id-1")
    finally:
        await js.delete_stream(f"{settings.prefix}_small")


async def test_publishes_on_a_closed_connection_each_fail_as_js_publish_does(
    settings: Settings,
) -> None:
    """Two publishes opening the inbox together on a closed connection (a runner shutting down
    while two jobs publish their first line) both get nats-py's ConnectionClosedError, which a
    retry waits out, not an error of the inbox's own that it would take as a refusal."""
    nc = await eventstore.connect(settings, "test-closed")
    await nc.close()
    inbox = ackinbox.AckInbox(nc)
    results = await asyncio.gather(
        *(inbox.publish(f"{settings.prefix}.x", b"{}", f"id-{n}") for n in range(2)),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [nats.errors.ConnectionClosedError] * 2
    assert all(retry.is_transient(r) for r in results if isinstance(r, BaseException))


async def test_a_client_connected_again_after_a_close_gets_its_acks(
    js: JetStreamContext, settings: Settings
) -> None:
    """nats-py forgets its subscriptions when a connection closes; the inbox subscribes again
    when the same client connects again, instead of waiting for acks nobody delivers."""
    subject = Names(settings.prefix).job_kind_subject("inboxjob", "lines")
    nc = await eventstore.connect(settings, "test-again")
    inbox = ackinbox.AckInbox(nc, timeout=2.0)
    first = await inbox.publish(subject, b"{}", "id-1")
    await nc.close()
    await nc.connect(settings.nats_url)
    try:
        again = await inbox.publish(subject, b"{}", "id-2")
    finally:
        await nc.close()
    assert again.seq == first.seq + 1


async def test_acks_reach_their_publishes_without_a_task_of_the_inbox(
    js: JetStreamContext, settings: Settings
) -> None:
    """The inbox's acks are handed to their publishes as nats-py reads them: no task waits on a
    queue of the subscription (a wake-up and a turn of the loop for every message published),
    and nothing stays pending in nats-py however many acks come at once."""
    subject = Names(settings.prefix).job_kind_subject("inboxjob", "lines")
    inbox = ackinbox.AckInbox(js._nc)
    before = asyncio.all_tasks()
    await inbox.publish(subject, b"{}", "id-0")
    assert asyncio.all_tasks() - before == set()
    acks = await asyncio.gather(*(inbox.publish(subject, b"{}", f"id-{n}") for n in range(1, 2001)))
    assert sorted(ack.seq for ack in acks) == list(range(acks[0].seq, acks[0].seq + 2000))
    assert inbox._subscription is not None
    assert inbox._subscription.pending_msgs == 0
    assert inbox._subscription.pending_bytes == 0


async def test_an_ack_that_cannot_be_handed_over_does_not_stop_the_connection_reading(
    js: JetStreamContext, settings: Settings
) -> None:
    """The hand-over runs in nats-py's read loop, which stops reading for good on an exception:
    one failing hand-over costs that publish its ack, never the connection's later ones."""
    subject = Names(settings.prefix).job_kind_subject("inboxfail", "lines")
    inbox = ackinbox.AckInbox(js._nc, timeout=1.0)
    await inbox.publish(subject, b"{}", "fail-0")
    assert inbox._subscription is not None
    handover = inbox._subscription._pending_queue
    deliver = handover._deliver

    def fail_once(msg: object) -> None:
        handover._deliver = deliver
        raise RuntimeError("hand-over failed")

    handover._deliver = fail_once
    with pytest.raises(nats.errors.TimeoutError):
        await inbox.publish(subject, b"{}", "fail-1")
    again = await inbox.publish(subject, b"{}", "fail-2")
    assert again.seq > 0


async def test_a_headed_publish_carries_its_headers_only_and_a_refusal_keeps_its_error_code(
    js: JetStreamContext, settings: Settings
) -> None:
    """The lock bucket's writes: stored with their own headers and no Nats-Msg-Id (a KV write
    must never be taken for a duplicate), and a conditional write JetStream refuses raises
    the APIError whose code ``SlotTable`` turns into KeyWrongLastSequenceError."""
    subject = Names(settings.prefix).job_kind_subject("inboxkv", "lines")
    inbox = ackinbox.of(js._nc)
    expected = "Nats-Expected-Last-Subject-Sequence"
    first = await inbox.publish_headed(subject, b"a", {expected: "0"})
    again = await inbox.publish_headed(subject, b"a", None)
    assert (again.seq, again.duplicate) == (first.seq + 1, False)
    stored = await js.get_msg(Names(settings.prefix).stream, first.seq)
    assert stored.headers is not None
    assert stored.headers[expected] == "0"
    assert MSG_ID_HEADER not in stored.headers
    with pytest.raises(nats.js.errors.APIError) as refused:
        await inbox.publish_headed(subject, b"b", {expected: str(first.seq)})
    assert refused.value.err_code == 10071


async def test_a_headed_publish_with_a_shorter_timeout_times_out_by_its_own(
    js: JetStreamContext, settings: Settings
) -> None:
    """A lease renewal's write waits its own, shorter timeout, not the inbox's: with nobody
    acknowledging, it fails long before the inbox's timeout would have come; the inbox's
    other publishes (on its one shared timer) are unaffected: one waiting on the same silent
    subject still waits, and one to the stream is stored."""
    subject = f"{settings.prefix}-silent-headed.x"
    await js._nc.subscribe(subject)  # receives, never answers
    inbox = ackinbox.AckInbox(js._nc, timeout=600.0)
    shared = asyncio.ensure_future(inbox.publish_headed(subject, b"{}", {"X": "0"}))
    try:
        async with asyncio.timeout(60):
            with pytest.raises(nats.errors.TimeoutError):
                await inbox.publish_headed(subject, b"{}", {"X": "1"}, timeout=0.2)
        assert not shared.done()
        assert len(inbox._waiting) == 1
        stored = await inbox.publish_headed(
            Names(settings.prefix).job_kind_subject("inboxjob", "lines"), b"{}", None
        )
        assert stored.seq > 0
        assert not shared.done()
    finally:
        shared.cancel()


async def test_publishes_and_requests_cancelled_while_waiting_leave_nothing_behind(
    js: JetStreamContext, settings: Settings
) -> None:
    """A job cancelled while its writes wait for their acks: no entry left in the inbox's
    tables, and no timer of its own left to fire (the shared timer is the inbox's one, for
    every publish)."""
    subject = f"{settings.prefix}-silent-cancel.x"
    await js._nc.subscribe(subject)  # receives, never answers
    inbox = ackinbox.AckInbox(js._nc, timeout=600.0)
    await inbox.publish(Names(settings.prefix).job_kind_subject("inboxjob", "lines"), b"{}", "c0")
    waiting = [
        asyncio.ensure_future(inbox.publish_headed(subject, b"{}", {"X": "1"}, timeout=300.0)),
        asyncio.ensure_future(inbox.publish_headed(subject, b"{}", None)),
        asyncio.ensure_future(inbox.request(subject, b"{}")),
    ]
    await js._nc.flush()  # the three are sent and wait for their replies meanwhile
    assert (len(inbox._timed), len(inbox._waiting)) == (1, 2)
    for task in waiting:
        task.cancel()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert (inbox._timed, inbox._waiting) == ({}, {})
    loop = asyncio.get_running_loop()
    own_timers = [
        h
        for h in loop._scheduled  # type: ignore[attr-defined]
        if not h.cancelled() and getattr(h, "_callback", None) is ackinbox._time_out
    ]
    assert own_timers == []


async def test_the_last_message_read_through_the_inbox_is_js_get_last_msgs(
    js: JetStreamContext, settings: Settings
) -> None:
    """The runner's reads (``subscription.last_stored``): the same message as js.get_last_msg
    (its sequence and data; a wildcard subject's newest), and None where ``last_message``
    answers None: nothing stored on the subject, or no such stream."""
    names = Names(settings.prefix)
    inbox = ackinbox.of(js._nc)
    older = names.job_kind_subject("inboxread", "requested")
    newer = names.job_kind_subject("inboxread", "status")
    await inbox.publish(older, b'{"n":1}', "read-1")
    await inbox.publish(newer, b'{"n":2}', "read-2")
    for subject in (older, names.job_subjects("inboxread")):
        got = await subscription.last_stored(inbox, js, names.stream, subject)
        expected = await js.get_last_msg(names.stream, subject)
        assert got is not None
        assert (got.seq, got.data) == (expected.seq, expected.data)
    nothing = names.job_kind_subject("inboxread", "cancel")
    assert await subscription.last_stored(inbox, js, names.stream, nothing) is None
    assert await subscription.last_message(js, f"{names.stream}_none", older) is None
    assert await subscription.last_stored(inbox, js, f"{names.stream}_none", older) is None
