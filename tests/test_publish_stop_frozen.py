"""A publish "until stored" on a stop path ends on its cancel even when nats-py swallows it.

With more than nats-py's pending_size (2 MiB) waiting to be sent, a publish flushes by force
and waits for the flusher with no bound (``flush_timeout`` is None): NATS frozen, for ever. A
cancel there is caught by nats-py (``Client._flush_pending``), the publish returns, and the
retry went on: once the stop had closed the connection, with ConnectionClosedError, for ever.
That is what ``asyncio.run`` (the services' ``asyncio.Runner``) meets at a process's exit: it
cancels the tasks still running once, then waits for them, and the process never exited.

NATS is frozen for real (SIGSTOP) and its connection clogged (tests/tools/clogged_nats.py)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jobrunner.common import ackinbox, eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze, thaw
from tests.tools.clogged_nats import clogged_past_pending_size

# How long the test waits for the cancelled publish to end: its ack's timeout (5 s, what it may
# wait after the swallowed cancel) with room for a loaded machine.
PATIENCE = ackinbox.ACK_TIMEOUT + 15


@pytest.mark.parametrize("cancelled", ["before-the-close", "after-the-close"])
async def test_a_publish_until_stored_ends_on_a_cancel_nats_py_swallowed(
    settings: Settings, own_nats: EmbeddedNats, cancelled: str
) -> None:
    """A job's ending published while NATS is frozen and more than 2 MiB wait to be sent: its
    cancel (the runner's exit) ends it, whether it comes before or after the connection's
    close; it used to retry for ever, and the runner never exited."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    private = msgspec.structs.replace(settings, nats_url=own_nats.url)
    nc = await eventstore.connect(private, "runner")
    names = Names(private.prefix)
    filling: list[asyncio.Future[None]] = []
    publishing: asyncio.Future[object] | None = None
    try:
        await eventstore.ensure_topology(nc.jetstream(), names, private)
        inbox = ackinbox.of(nc)
        await inbox.publish_until_stored(names, events.JobRequested(job_id="j", job_type="t"))
        freeze(pid)
        await clogged_past_pending_size(nc, filling)
        ending = events.StatusChanged(job_id="j", status=events.JobStatus.FAILED)
        publishing = asyncio.ensure_future(inbox.publish_until_stored(names, ending))
        await asyncio.sleep(0.5)
        assert not publishing.done()
        if cancelled == "before-the-close":
            publishing.cancel()
            await asyncio.sleep(0.1)
            # nats-py swallowed it (its forced flush waits on): else this case tests nothing.
            assert not publishing.done(), "the cancel reached the publish: nothing swallowed it"
            await eventstore.close(nc, within=2.0)
        else:
            await eventstore.close(nc, within=2.0)
            publishing.cancel()
        done, _ = await asyncio.wait({publishing}, timeout=PATIENCE)
        assert done, "the cancelled publish retried on, and the process's exit would wait for ever"
        assert publishing.cancelled()
    finally:
        thaw(pid)
        for task in [*filling, *([publishing] if publishing else [])]:
            task.cancel()
        await asyncio.wait([*filling, *([publishing] if publishing else [])], timeout=10)
        await eventstore.close(nc)
