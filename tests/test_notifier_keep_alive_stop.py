"""A job end's "in progress" keeper ends with the notifier's work on that end, even when its
cancel is lost.

While the notifier delivers a job's webhooks, a keeper tells JetStream every third of the ack
wait that the end is still being worked on (``msg.in_progress``, a publish). nats-py swallows a
cancel that arrives while it flushes: the keeper went on saying "in progress" for an end long
acknowledged, a task per such end, until the process exited. Here the keeper's real
``in_progress`` reaches a real NATS and the cancel is lost after it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.services.notifier.service import Notifier
from tests.lostcancel import CancelLostInAPause
from tests.webhook_support import webhook_settings


async def test_a_keeper_whose_cancel_was_lost_in_in_progress_ends_with_its_handling(
    js: JetStreamContext, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = msgspec.structs.replace(webhook_settings(settings), notifier_ack_wait_seconds=0.6)
    names = Names(settings.prefix)
    end = events.StatusChanged(
        job_id="keptalive", status=events.JobStatus.COMPLETED, occurred_at=datetime.now(UTC)
    )
    await eventstore.publish(js, names, end)
    notifier = Notifier(quick, js._nc)
    (msg,) = await (await notifier.open_consumer()).fetch(1, timeout=30)

    real_in_progress = Msg.in_progress
    losing = CancelLostInAPause()
    keeper: asyncio.Task[object] | None = None

    async def in_progress_losing_a_cancel(self: Msg) -> None:
        nonlocal keeper
        await real_in_progress(self)
        if not losing.lost:
            keeper = asyncio.current_task()
        await losing.pause(30)  # until the cancel comes: the flush ends after the end's ack

    async def delivered_once_kept_alive(*args: object) -> bool:
        await losing.reached.wait()
        return True

    monkeypatch.setattr(Msg, "in_progress", in_progress_losing_a_cancel)
    monkeypatch.setattr(notifier, "_deliver", delivered_once_kept_alive)
    await notifier.capacity.acquire()  # (as the fetch loop does; the handling gives it back)
    await asyncio.wait_for(notifier._handle(msg, asyncio.Event()), 30)
    assert keeper is not None
    try:
        done, _ = await asyncio.wait({keeper}, timeout=5)
        assert losing.lost == 1
        assert done, "the keeper went on saying 'in progress' for an end already acknowledged"
    finally:
        keeper.cancel()  # (not lost again: the test loses one)
        await asyncio.wait({keeper}, timeout=10)
        await notifier.sender.close()
