"""A lock-bucket write retried while the lease lasts ends on its cancel even when nats-py
swallows it (NATS frozen, more than 2 MiB waiting to be sent).

``JobExecutor._retry`` retries until the write is stored or the keeper's ``lost`` is set. At a
process's exit ``asyncio.run`` cancels every task left once, the keeper's too: ``lost`` never
comes, and with the cancel swallowed by nats-py (``Client._flush_pending``) and the connection
closed, the write failed with ConnectionClosedError and was retried for ever.

NATS is frozen for real (SIGSTOP) and its connection clogged (tests/tools/clogged_nats.py)."""

from __future__ import annotations

import asyncio

import msgspec

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.executor import JobExecutor
from jobrunner.services.runner.lease import LeaseKeeper
from jobrunner.services.runner.running import RunnerIdentity
from tests.freeze import freeze, thaw
from tests.tools.clogged_nats import clogged_past_pending_size

# A lease far longer than the test: its deadline (which would set ``lost`` and end the retry
# however the cancel went) cannot come while the test waits.
LEASE_TTL_SECONDS = 3600.0
# How long the test waits for the cancelled write to end: the write's own request timeout
# (what it may still wait after the swallowed cancel) with room for a loaded machine.
PATIENCE = 30.0


async def test_a_lock_bucket_write_retried_ends_on_a_cancel_nats_py_swallowed(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """A runner's exit while it forgets a job's record with NATS frozen and clogged: the exit's
    cancel ends the retried write; it used to retry for ever, and the runner never exited."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    private = msgspec.structs.replace(
        settings, nats_url=own_nats.url, lease_ttl_seconds=LEASE_TTL_SECONDS
    )
    nc = await eventstore.connect(private, "runner")
    names = Names(private.prefix)
    filling: list[asyncio.Future[None]] = []
    keeper: LeaseKeeper | None = None
    writing: asyncio.Future[None] | None = None
    try:
        await eventstore.ensure_topology(nc.jetstream(), names, private)
        slots = SlotTable(nc.jetstream(), names, private.lease_ttl_seconds)
        holder = RunnerIdentity.of_this_process("me").held_value("j", "emit")
        lease = await slots.try_acquire("job.j", holder)
        assert lease is not None

        async def nothing() -> None:
            return None

        keeper = LeaseKeeper(slots, lease, private.lease_ttl_seconds, nothing)
        keeper.start()
        freeze(pid)
        await clogged_past_pending_size(nc, filling)
        writing = asyncio.ensure_future(
            JobExecutor._retry("forget the job", keeper, lambda: slots.forget_run("j"))
        )
        await asyncio.sleep(0.5)
        assert not writing.done()
        # The exit (asyncio.run) cancels what is left once: the keeper with the write.
        assert keeper._task is not None
        keeper._task.cancel()
        writing.cancel()
        await eventstore.close(nc, within=2.0)
        done, _ = await asyncio.wait({writing}, timeout=PATIENCE)
        assert done, "the cancelled lock-bucket write retried on: the exit would wait for ever"
        assert not keeper.lost.is_set()  # it ended on its cancel, not on the lease's end
    finally:
        thaw(pid)
        left = [*filling, *([writing] if writing else [])]
        if keeper is not None and keeper._task is not None:
            left.append(keeper._task)
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=10)
        await eventstore.close(nc)
