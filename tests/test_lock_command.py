"""``jobrunner lock clear-unreadable``: a slot held by a value put by hand (no TTL: it would hold
the slot for ever) is freed; a readable lease is never touched."""

from __future__ import annotations

import asyncio
import os
import sys

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.common.slots import UNKNOWN_HOLDER
from tests.cli_support import cli_env
from tests.tools.slot_leases import held, slot_table


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease that outlives the command's start (a Python process importing jobrunner: seconds
    # on a loaded machine; the suite's 3 s lease expired before the command read it in CI).
    return msgspec.structs.replace(settings, lease_ttl_seconds=120.0)


async def clear_unreadable(settings: Settings, lock: str) -> tuple[int, str]:
    """The command's exit code and what it said (standard output and error)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobrunner.cli",
        "lock",
        "clear-unreadable",
        lock,
        env={**os.environ, **cli_env(settings)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_a_slot_held_by_a_value_put_by_hand_is_freed(settings: Settings) -> None:
    """`nats kv put` of a value that is no lease: the slot counts as held, for ever (no TTL);
    the command deletes it, and a job can take the slot again."""
    async with slot_table(settings) as slots:
        kv = await slots.kv()
        await kv.put("slot.printer", b"not a lease")
        lease = await slots.current("slot.printer")
        assert lease is not None
        assert lease.value == UNKNOWN_HOLDER
        code, said = await clear_unreadable(settings, "printer")
        assert code == 0, said
        assert "deleted, the slot is free" in said
        assert await slots.current("slot.printer") is None
        assert await slots.try_acquire("slot.printer", held("next")) is not None


async def test_a_readable_lease_is_left_alone(settings: Settings) -> None:
    """A lease jobrunner wrote is never deleted by the command, whoever holds it: exit 1, and
    the lease keeps its revision."""
    async with slot_table(settings) as slots:
        mine = await slots.try_acquire("slot.plotter", held("running-job"))
        assert mine is not None
        code, said = await clear_unreadable(settings, "plotter")
        assert code == 1, said
        assert "job running-job" in said
        assert "left alone" in said
        after = await slots.current("slot.plotter")
        assert after is not None
        assert after.revision == mine.revision


async def test_a_free_slot_is_left_as_it_is(settings: Settings) -> None:
    async with slot_table(settings) as slots:
        code, said = await clear_unreadable(settings, "scanner")
        assert code == 0, said
        assert "nothing to do" in said
        assert await slots.current("slot.scanner") is None
