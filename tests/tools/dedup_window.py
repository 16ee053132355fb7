"""The event stream's duplicate window, shrunk for a test that must outlast it: an event id
stored again after it is stored a second time (JetStream's ``Nats-Msg-Id`` dedup)."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names

WINDOW = 1.0  # seconds: the stream's duplicate window in the tests that outlast it


async def shrink_window(js: JetStreamContext, names: Names, settings: Settings) -> None:
    config = eventstore.stream_config(names, settings)
    config.duplicate_window = WINDOW
    await js.update_stream(config)


async def window_passed(js: JetStreamContext, names: Names) -> None:
    """Until an event id stored now is no longer a duplicate: the window has passed for every
    id stored before this call."""
    subject = names.job_kind_subject("window-probe", "status")
    msg_id = f"probe-{events.new_event_id()}"
    await js.publish(subject, b"probe", headers={"Nats-Msg-Id": msg_id})
    async with asyncio.timeout(60):
        while True:
            await asyncio.sleep(WINDOW / 4)
            ack = await js.publish(subject, b"probe", headers={"Nats-Msg-Id": msg_id})
            if not ack.duplicate:
                return
