"""The notifier's stop waits for its webhook handlers within its deadline even when NATS is
frozen under one of them: it gathered them with no bound, and a handler's last sends (its
attempt's record, its acknowledgement) wait on NATS.

NATS is frozen for real (SIGSTOP) while a handler waits on it, for just less or longer than
what the stop gives the handlers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.msg import Msg

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.notifier.service import Notifier
from tests.freeze import freeze, thaw
from tests.tools.frozen_close import close_while_frozen
from tests.webhook_support import webhook_settings

STOP_SECONDS = 6.0
# What the handlers get of it: the NATS connection's close keeps its last 3 s.
HANDLERS_SECONDS = STOP_SECONDS - eventstore.CLOSE_KEEP_SECONDS
LEFT = "webhook handlers did not end on their stop: left running"


@pytest.mark.parametrize(
    ("frozen_for", "ended"),
    [(HANDLERS_SECONDS - 1.5, True), (HANDLERS_SECONDS + 60, False)],
    ids=["freeze-within-the-deadline", "freeze-past-the-deadline"],
)
async def test_the_notifiers_stop_waits_for_its_handlers_within_its_deadline_nats_frozen(
    settings: Settings,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    frozen_for: float,
    ended: bool,
) -> None:
    """NATS back 1.5 s into the handlers' time, the stop waits for the handler; frozen past
    it, the handler is left, said in the log, and the notifier's run ends."""
    private = msgspec.structs.replace(
        webhook_settings(settings), nats_url=own_nats.url, stop_seconds=STOP_SECONDS
    )
    nc = await eventstore.connect(private, "test-notifier")
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    try:
        js = nc.jetstream()
        names = Names(private.prefix)
        await eventstore.ensure_topology(js, names, private)
        end = events.StatusChanged(
            job_id="stopfrozen", status=events.JobStatus.COMPLETED, occurred_at=datetime.now(UTC)
        )
        await eventstore.publish(js, names, end)
        notifier = Notifier(private, nc)
        handling = asyncio.Event()
        handled = asyncio.Event()

        async def handle_waiting_on_nats(msg: Msg, stop: asyncio.Event) -> None:
            handling.set()
            await stop.wait()
            # A handler's last send after the stop, on the frozen NATS: a flush's PONG comes
            # when the server is thawed, within 60 s.
            await nc.flush(timeout=60)
            handled.set()

        monkeypatch.setattr(notifier, "_handle", handle_waiting_on_nats)
        stop = asyncio.Event()
        running = asyncio.ensure_future(notifier.run(stop))
        await asyncio.wait_for(handling.wait(), 30)
        freeze(pid)
        stop.set()
        closed = await close_while_frozen(
            running,
            "the notifier's stop, a handler waiting on NATS,",
            patience=HANDLERS_SECONDS + 20,
            thaw_in=frozen_for,
            pids=[pid],
        )
        assert handled.is_set() == ended
        assert closed.logged(LEFT) == (0 if ended else 1)
        if not ended:
            # Left at its deadline (a loaded machine's margin), not when NATS is back.
            assert closed.took < HANDLERS_SECONDS + 2, f"stopped after {closed.took:.1f} s"
    finally:
        thaw(pid)
        await eventstore.close(nc)
