"""A runner's exit while it ends a job's run (its record forgotten, its lease released:
``SlotTable.end_run``) with NATS frozen: the exit's cancel ends the retries even when it is lost
(nats-py swallows one that arrives while it flushes, 3.11's ``wait_for`` one that arrives with
the reply). They retried every pause until the lease's end, up to a lease TTL after the stop
began, and the runner's exit waited for them.

NATS is frozen for real (SIGSTOP): the acks never come. The cancel is lost where the wait for
an ack ends (tests/lostcancel.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from jobrunner.common import eventstore, slots
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.running import RunnerIdentity
from tests.freeze import freeze, thaw
from tests.lostcancel import CancelLostInAPause

# A lease far longer than the test: its end (which ends the retries however the cancel went)
# cannot come while the test waits.
LEASE_TTL_SECONDS = 3600.0
RETRY_PAUSE = 0.2
# How long the test waits for the cancelled end to end: a round's ack timeout (5 s) with room
# for a loaded machine; the retries went on for the lease's hour.
PATIENCE = 20.0


async def test_ending_a_run_ends_on_its_cancel_even_a_lost_one(
    settings: Settings, own_nats: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's exit cancels ``end_run`` while NATS is frozen and the cancel is lost as an
    ack's wait ends: it ends at its next retry instead of retrying until the lease's end."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    private = msgspec.structs.replace(
        settings, nats_url=own_nats.url, lease_ttl_seconds=LEASE_TTL_SECONDS
    )
    real_deleted = slots._deleted
    losing = CancelLostInAPause()

    async def deleted_losing_a_cancel(sent: Any) -> None:
        try:
            await real_deleted(sent)
        finally:
            await losing.pause(30)  # until the cancel comes: it arrives as the wait ends

    monkeypatch.setattr(slots, "_deleted", deleted_losing_a_cancel)
    nc = await eventstore.connect(private, "runner")
    names = Names(private.prefix)
    ending: asyncio.Future[bool] | None = None
    try:
        await eventstore.ensure_topology(nc.jetstream(), names, private)
        table = SlotTable(nc.jetstream(), names, private.lease_ttl_seconds)
        holder = RunnerIdentity.of_this_process("me").held_value("j", "emit")
        lease = await table.try_acquire("job.j", holder)
        assert lease is not None
        freeze(pid)
        ending = asyncio.ensure_future(table.end_run("j", lease, RETRY_PAUSE))
        await asyncio.wait_for(losing.reached.wait(), PATIENCE)  # an ack's wait has ended
        ending.cancel()  # the exit (asyncio.run) cancels what is left once
        done, _ = await asyncio.wait({ending}, timeout=PATIENCE)
        assert losing.lost == 1
        assert done, "the cancelled end of a run retried on: the exit would wait a lease TTL"
        assert ending.cancelled()
    finally:
        thaw(pid)
        if ending is not None:
            ending.cancel()
            await asyncio.wait({ending}, timeout=10)
        await eventstore.close(nc)
