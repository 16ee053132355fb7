"""The runner's heartbeat ends within what its stop leaves it even when NATS is frozen: its last
beat (nats-py may swallow its cancel) and its key's delete each waited a request's timeout, past
the stop's deadline. NATS is frozen for real (SIGSTOP), for just less or longer than it."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from jobrunner.common import eventstore, runnerpool
from jobrunner.common.settings import Settings
from jobrunner.common.stopping import Deadline
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.heartbeat import heartbeat
from tests.freeze import freeze, thaw
from tests.tools.frozen_close import close_while_frozen

BOUND = 3.0  # what the stop leaves the heartbeat here
NOT_DELETED = "runner heartbeat key not deleted: the bucket's TTL drops it"
RUNNER = "stop-frozen"


@pytest.mark.parametrize(
    ("frozen_for", "deleted"),
    [(BOUND - 1.5, True), (BOUND + 30, False)],
    ids=["freeze-within-the-deadline", "freeze-past-the-deadline"],
)
async def test_the_heartbeat_ends_within_the_stops_deadline_while_nats_is_frozen(
    settings: Settings, own_nats: EmbeddedNats, frozen_for: float, deleted: bool
) -> None:
    """NATS back within the deadline, the runner's key is deleted (gone from /health at once);
    frozen past it, the heartbeat ends at the deadline, the key left to its TTL, said in the
    log."""
    private = msgspec.structs.replace(settings, nats_url=own_nats.url, runner_heartbeat_seconds=0.5)
    nc = await eventstore.connect(private, "test")
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    try:
        js = nc.jetstream()
        names = Names(private.prefix)
        await eventstore.ensure_topology(js, names, private)
        kv = await js.key_value(names.runners_bucket)
        deadline = Deadline(0)
        stopped = asyncio.Event()

        async def beating() -> None:
            async with heartbeat(js, names, private, RUNNER, lambda: deadline):
                await stopped.wait()

        running = asyncio.ensure_future(beating())
        async with asyncio.timeout(30):
            while True:
                try:
                    await kv.get(runnerpool.key_of(RUNNER))
                    break
                except KeyNotFoundError:
                    await asyncio.sleep(0.1)
        freeze(pid)
        deadline = Deadline(BOUND)
        stopped.set()
        closed = await close_while_frozen(
            running, "the heartbeat's end", patience=BOUND + 20, thaw_in=frozen_for, pids=[pid]
        )
        assert closed.logged(NOT_DELETED) == (0 if deleted else 1)
        if deleted:
            with pytest.raises(KeyNotFoundError):  # deleted: gone from /health at once
                await kv.get(runnerpool.key_of(RUNNER))
        else:
            # At the deadline (a loaded machine's margin), not after a request's timeout.
            assert closed.took < BOUND + 2, f"ended after {closed.took:.1f} s"
    finally:
        thaw(pid)
        await eventstore.close(nc)
