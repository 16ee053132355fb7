"""The parts of nats-py's private state jobrunner reads (see the note at the nats-py pin in
pyproject.toml): a nats-py release that renames them fails here, not in a reader after a NATS
restart. Plain objects, no server."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any

import nats
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from jobrunner.common import flowcontrol, subscription


def test_a_jetstream_context_holds_its_client_as_nc() -> None:
    """``subscription`` and the projector's feed ask the client whether it is connected or
    closed, and which client a reader reads on (``reopen_after_reconnect``)."""
    nc = nats.NATS()
    assert nc.jetstream()._nc is nc


def test_a_jetstream_context_holds_its_api_prefix_and_timeout() -> None:
    """``retry.start_context`` makes the same context with the start's request timeout."""
    nc = nats.NATS()
    js = nc.jetstream(domain="hub", timeout=2.5)
    assert (js._prefix, js._timeout) == ("$JS.hub.API", 2.5)


def test_a_push_subscription_holds_its_consumer_name_as_consumer() -> None:
    """The name of a reader's consumer, to delete it or ask whether it is still there."""
    nc = nats.NATS()
    sub = Subscription(nc, 1, "deliver")
    push = JetStreamContext.PushSubscription(nc.jetstream(), sub, "STREAM", "consumer-name")
    assert push._consumer == "consumer-name"


def test_unsubscribe_stops_the_delivery_before_it_waits() -> None:
    """A reader opened again reads its restart point once its old subscription's ``unsubscribe``
    returned: nats-py must have stopped that subscription's delivery task and dropped it from
    the client before its first await, so no message of it reaches the reader after that."""
    source = inspect.getsource(Subscription.unsubscribe)
    stop = source.index("self._stop_processing()")
    remove = source.index("self._conn._remove_sub(self._id)")
    first_await = source.index("await ")
    assert stop < first_await
    assert remove < first_await


# --- a KV watch made again after a reconnect (``subscription._reopen_watch_if_gone``)


def test_the_client_keeps_its_subscriptions_by_id_in_subs() -> None:
    """The watches on a connection are found among its subscriptions, and one still subscribed
    is the one under its own id (``stop`` drops it)."""
    nc = nats.NATS()
    assert nc._subs == {}
    sub = Subscription(nc, 7, "deliver", cb=None)
    assert sub._id == 7
    assert sub._jsi is None  # a plain subscription: no ordered-consumer state
    assert sub._cb is None  # a reader's is its ``_on_message``


def test_the_ordered_consumer_state_holds_what_the_watch_reopen_reads() -> None:
    """``_JSI``: its client, subscription, push subscription, whether it is ordered, and the
    stream sequence of the last message received."""
    nc = nats.NATS()
    js = nc.jetstream()
    sub = Subscription(nc, 1, "deliver")
    push = JetStreamContext.PushSubscription(js, sub, "STREAM", "consumer-name")
    config = api.ConsumerConfig()
    jsi = JetStreamContext._JSI(js, nc, "STREAM", True, push, sub, config)
    assert (jsi._conn, jsi._sub, jsi._psub, jsi._ordered, jsi._sseq) == (nc, sub, push, True, 0)
    # What the reopen checks a new consumer against, and for how long it waits for it.
    assert (jsi._js, jsi._stream, jsi._ccreq) == (js, "STREAM", config)
    assert js._timeout == 5


def test_reset_ordered_consumer_drops_the_old_subject_before_it_waits() -> None:
    """The watch's start (``_sseq + 1``) is read as ``reset_ordered_consumer`` is called: it must
    drop the old subscription id before its first await (so no message of the old consumer is
    taken after the start was read), keep the same subscription object (its queue still delivers
    what came before), and name the new consumer on the push subscription once made (what the
    reopen waits for)."""
    reset = inspect.getsource(JetStreamContext._JSI.reset_ordered_consumer)
    assert reset.index("self._conn._remove_sub(osid)") < reset.index("await ")
    assert "self._conn._subs[nsid] = self._sub" in reset
    assert "opt_start_seq = sseq" in reset
    assert "config.deliver_subject = new_deliver" in reset  # the subject the reopen checks
    # The create goes through the attribute, so the reopen's own (set on the instance for its
    # reset) makes it and hears a refusal; nats-py's would tell only the error callback.
    assert "asyncio.create_task(self.recreate_consumer())" in reset
    assert not hasattr(JetStreamContext._JSI, "__slots__")
    recreate = inspect.getsource(JetStreamContext._JSI.recreate_consumer)
    assert "self._psub._consumer = cinfo.name" in recreate  # what the reopen's own does
    assert "config=self._ccreq, timeout=self._js._timeout" in recreate


def test_process_msg_counts_an_ordered_message_before_queueing_it() -> None:
    """``_sseq`` is set as a message is read off the socket, before it is queued for delivery:
    every message up to it reaches the watch from the queue."""
    source = inspect.getsource(nats.NATS._process_msg)
    assert source.index("jsi._sseq = sseq") < source.index("sub._pending_queue.put_nowait(msg)")


def _ordered_state(cb: Any = None) -> tuple[nats.NATS, Subscription, Any]:
    """A client, a subscription (with ``cb``) and its ordered-consumer state, as
    ``subscribe_bind`` makes them; no server."""
    nc = nats.NATS()
    js = nc.jetstream()
    sub = Subscription(nc, 1, "deliver", cb=cb)
    push = JetStreamContext.PushSubscription(js, sub, "STREAM", "consumer-name")
    sub._jsi = JetStreamContext._JSI(js, nc, "STREAM", True, push, sub, api.ConsumerConfig())
    return nc, sub, sub._jsi


async def _callback(msg: Any) -> None:
    return None


def test_flow_control_is_answered_by_what_get_js_delivered_counts() -> None:
    """A reader's flow-control answer waits until its callback took the messages sent before
    the request (``flowcontrol.answer_flow_control_once_taken``): nats-py must ask the
    instance's ``get_js_delivered`` (set on it, not on the class), count queued messages in
    ``_fciseq``, and keep them in ``_sub._pending_queue``; a request that comes with nothing
    queued is answered as it arrives, else held."""
    source = inspect.getsource(nats.NATS._process_msg)
    assert "sub._jsi.get_js_delivered() >= sub._jsi._fciseq" in source
    assert "schedule_flow_control_response(msg.reply)" in source
    assert "await self.publish(fc_reply)" in source
    _, sub, jsi = _ordered_state(_callback)
    for reply in ("a", "b", "c"):
        jsi.track_sequences(reply)
    sub._pending_queue.put_nowait("waiting")  # type: ignore[arg-type]
    sub._received = 3  # nats-py's own count: every arrival, taken or not
    assert jsi.get_js_delivered() == 3
    flowcontrol.answer_flow_control_once_taken(jsi._psub)
    assert jsi.get_js_delivered() == 2


def test_a_held_flow_control_answer_is_kept_as_its_reply_and_point() -> None:
    """A request that came while messages sent before it were queued is held in ``_fcr`` (the
    reply subject) and ``_fcd`` (how many had been queued), on the connection ``_conn``: what
    a reader's callback reads to send it itself (``flowcontrol.answer_held_flow_control``), and
    clears once sent."""
    nc, _, jsi = _ordered_state()
    assert (jsi._fcr, jsi._fcd) == (None, 0)
    for reply in ("a", "b"):
        jsi.track_sequences(reply)
    jsi.schedule_flow_control_response("$JS.FC.STREAM.consumer.1")
    assert (jsi._fcr, jsi._fcd) == ("$JS.FC.STREAM.consumer.1", 2)
    assert jsi._conn is nc  # the connection it publishes the answer on


def test_nats_pys_own_sender_of_held_answers_is_a_task_a_reader_can_stop() -> None:
    """nats-py sends held answers from one task a subscription, ``_fctask``
    (``check_flow_control_response``, every 0.25 s), made by ``subscribe_bind`` for an ordered
    consumer only and never made again (not by ``reset_ordered_consumer``): a reader cancels
    it (``answer_flow_control_once_taken``) and its callback is the only sender."""
    subscribe = inspect.getsource(JetStreamContext.subscribe_bind)
    assert "if ordered_consumer:" in subscribe
    assert "sub._jsi._fctask = asyncio.create_task(sub._jsi.check_flow_control_response())" in (
        subscribe
    )
    assert "_fctask" not in inspect.getsource(JetStreamContext._JSI.reset_ordered_consumer)
    poll = inspect.getsource(JetStreamContext._JSI.check_flow_control_response)
    assert "await asyncio.sleep(0.25)" in poll
    assert "except asyncio.CancelledError:" in poll
    _, _, jsi = _ordered_state(_callback)
    assert jsi._fctask is None


async def test_a_reader_stops_nats_pys_sender_of_held_answers() -> None:
    """``answer_flow_control_once_taken`` cancels the subscription's ``_fctask``."""
    _, _, jsi = _ordered_state(_callback)
    jsi._fctask = asyncio.create_task(jsi.check_flow_control_response())
    flowcontrol.answer_flow_control_once_taken(jsi._psub)
    with contextlib.suppress(asyncio.CancelledError):
        await jsi._fctask
    assert jsi._fctask.cancelled()


def test_the_callback_is_handed_each_message_as_it_leaves_the_queue() -> None:
    """The taken count (queued less still queued) moves only as nats-py's delivery task takes a
    message from the queue, and that task hands it to the callback next: the callback sees
    every message that moves the count, so it is where a held answer goes out."""
    source = inspect.getsource(Subscription._wait_for_msgs)
    get = source.index("msg = await self._pending_queue.get()")
    assert get < source.index("await self._cb(msg)")
    assert source.count("_pending_queue.get") == 1


def test_a_dropped_message_is_reported_with_its_subscription() -> None:
    """A reader hears of a message nats-py dropped (``subscription.lost_messages``) by the
    error it hands the connection's error callback, which names the subscription."""
    source = inspect.getsource(nats.NATS._process_msg)
    assert "errors.SlowConsumerError(subject=msg.subject, reply=msg.reply, sid=sid, sub=sub)" in (
        source
    )
    assert "await self._error_cb(" in source


# --- a watch made on a start's context, then kept on the connection's (``subscription.keep_on``)


def test_keep_on_moves_every_later_request_of_a_watch_to_the_given_context() -> None:
    """A watch's later requests go through its push subscription's ``_js`` (its consumer info)
    and its ordered-consumer state's ``_js`` (the consumer made again): ``keep_on`` sets both."""
    nc = nats.NATS()
    starting, kept = nc.jetstream(timeout=1.0), nc.jetstream()
    sub = Subscription(nc, 1, "deliver")
    push = JetStreamContext.PushSubscription(starting, sub, "STREAM", "consumer-name")
    sub._jsi = JetStreamContext._JSI(starting, nc, "STREAM", True, push, sub, api.ConsumerConfig())
    subscription.keep_on(push, kept)
    assert push._js is kept
    assert sub._jsi._js is kept
    assert "self._js._jsm.consumer_info(" in inspect.getsource(push.consumer_info)


def test_a_bucket_holds_what_start_bucket_copies() -> None:
    """``retry.start_bucket`` makes the same bucket on another context from these."""
    kv = KeyValue(name="b", stream="KV_b", pre="$KV.b.", js=nats.NATS().jetstream(), direct=True)
    assert (kv._name, kv._stream, kv._pre, kv._direct) == ("b", "KV_b", "$KV.b.", True)
    assert kv._js._timeout == 5


# --- a watch of several key filters (``keywatch.watch_keys``), nats-py's watch with a config


def test_a_key_watcher_holds_what_watch_keys_fills() -> None:
    """``watch_keys`` makes nats-py's watcher and fills it as ``KeyValue.watch`` does: its
    subscription, its queue of updates and whether the ``None`` after the current state went."""
    watcher = KeyValue.KeyWatcher(None)
    assert (watcher._sub, watcher._init_done) == (None, False)
    assert watcher._updates.maxsize > 0
    watch = inspect.getsource(KeyValue.watch)
    assert "watcher._init_done = True" in watch
    assert "await watcher._updates.put(None)" in watch


def test_subscribe_keeps_a_configs_filter_subjects() -> None:
    """An ordered subscription made with a config of several filters keeps them (no single
    ``filter_subject`` beside them, which the server refuses) in the config nats-py sends again
    to make the consumer again (``_ccreq``)."""
    source = inspect.getsource(JetStreamContext.subscribe)
    assert "if not config.filter_subjects:" in source
    assert "config.filter_subject = subject" in source
