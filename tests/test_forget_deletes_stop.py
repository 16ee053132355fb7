"""A stopping service waits for its background NATS requests (consumer deletions, the checks
after a reconnect) at most ``FORGET_DELETES_SECONDS``, even when their cancel was lost.

``forget_deletes`` cancelled them and waited with no bound. A request whose cancel is lost
(nats-py swallows one that arrives while it flushes, 3.11's wait_for one that comes with the
reply) goes on to its timeout; a check after a reconnect then retries for as long as NATS stays
away: the projector's and the API's stop waited for ever on a frozen NATS. Here NATS is frozen
for real and the requests are real."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from structlog.testing import capture_logs

from jobrunner.common import subscription
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze, thaw
from tests.lostcancel import CancelLost

T = TypeVar("T")
BOUND = 3.0  # FORGET_DELETES_SECONDS here
LEFT = "background NATS requests did not end on their cancel: left running"


@pytest.fixture
async def nc(own_nats: EmbeddedNats) -> AsyncIterator[NATS]:
    """A connection to the test's own server, which the test freezes (thawed at the end)."""
    assert own_nats.proc is not None
    nc = await nats.connect(own_nats.url, max_reconnect_attempts=-1)
    try:
        yield nc
    finally:
        thaw(own_nats.proc.pid)
        # Whatever a failed test left runs no longer (the second cancel is not lost).
        pending = [t for t in subscription._deleting if t.get_loop() is asyncio.get_running_loop()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=30)
        await nc.close()


async def _stream(js: JetStreamContext) -> str:
    name = f"forget{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    return name


async def _forget_deletes_within(seconds: float) -> list[dict[str, Any]]:
    """Run ``forget_deletes``; it must return within ``seconds``; its log."""
    with capture_logs() as logs:
        forgetting = asyncio.ensure_future(subscription.forget_deletes())
        done, _ = await asyncio.wait({forgetting}, timeout=seconds)
        assert done, "forget_deletes waited past its bound"
    return [e for e in logs if e["event"] == LEFT]


@pytest.mark.parametrize(
    ("request_seconds", "waited_for"),
    [(BOUND - 1.5, True), (BOUND + 3, False)],
    ids=["request-within-the-bound", "request-past-the-bound"],
)
async def test_a_deletion_deaf_to_its_cancel_holds_a_stop_at_most_the_bound(
    nc: NATS,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    request_seconds: float,
    waited_for: bool,
) -> None:
    """A consumer's deletion sent to a frozen NATS that lost its cancel ends by its request
    timeout: one of 1.5 s is waited for, one of 6 s is left (and logged) after 3 s."""
    assert own_nats.proc is not None
    monkeypatch.setattr(subscription, "FORGET_DELETES_SECONDS", BOUND)
    js = nc.jetstream(timeout=request_seconds)
    stream = await _stream(js)
    consumer = await js.add_consumer(stream, api.ConsumerConfig(inactive_threshold=60))
    losing = CancelLost()
    real_delete: Callable[..., Awaitable[bool]] = js.delete_consumer
    monkeypatch.setattr(js, "delete_consumer", lambda *a: losing.run(real_delete(*a)))
    freeze(own_nats.proc.pid)
    subscription.delete_consumer_soon(js, stream, consumer.name or "")
    deleting = [t for t in subscription._deleting if t.get_loop() is asyncio.get_running_loop()]
    await asyncio.wait_for(losing.under_way.wait(), 30)
    left = await _forget_deletes_within(BOUND + 20)
    assert losing.lost == 1
    assert all(task.done() for task in deleting) == waited_for
    assert [e["left"] for e in left] == ([] if waited_for else [1])


async def test_a_check_after_a_reconnect_deaf_to_its_cancel_no_longer_holds_a_stop_for_ever(
    nc: NATS, own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's check after a reconnect that lost its cancel retries while NATS is frozen:
    the stop leaves it after the bound, and says so, instead of waiting for NATS."""
    assert own_nats.proc is not None
    monkeypatch.setattr(subscription, "FORGET_DELETES_SECONDS", BOUND)
    js = nc.jetstream(timeout=1.0)  # each of its failed checks: a second, then tried again
    stream = await _stream(js)
    async with subscription.ordered_reader(js, stream, f"{stream}.>", 1) as reader:
        losing = CancelLost()
        real_exists = reader._consumer_exists
        monkeypatch.setattr(reader, "_consumer_exists", lambda: losing.run(real_exists()))
        freeze(own_nats.proc.pid)
        assert reader.reopen_if_gone_soon(subscription._request_turns())
        checking = reader._reopening
        assert checking is not None
        await asyncio.wait_for(losing.under_way.wait(), 30)
        left = await _forget_deletes_within(BOUND + 20)
        assert losing.lost == 1
        assert not checking.done()  # still retrying: NATS is still frozen
        assert [e["left"] for e in left] == [1]
        thaw(own_nats.proc.pid)
        checking.cancel()  # the second cancel is not lost
        await asyncio.wait({checking}, timeout=30)
