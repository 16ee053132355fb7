"""A runner stopped while its lost-job sweep waits on a frozen NATS: the sweep gets the stop's
bound (what stop_seconds leaves before the NATS connections' close) to finish, and is then
cut short. The stop used to set the sweeper's stop event and, past the bound, leave the sweep
running on into the connections' close and the process's exit, logged as an error, until NATS
answered or its requests timed out.

The runner sweeps every second (a 3 s lease TTL): NATS frozen 1.1 s before the stop has a sweep
waiting on it at the stop (a read of the run records waits up to 5 s for an answer: begun at
most 1.1 s before the stop, it has not given up at the 3 s bound, even with the stop a little
late on a loaded machine)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.freeze import freeze, thaw
from tests.tools.running_runner import running_runner

# The runner's stop_seconds: its sweep may take 3 s of it (eventstore.CLOSE_KEEP_SECONDS is
# kept for the connection's close), and NATS is thawed 2 s either side of that.
STOP_SECONDS = 6.0
SWEEP_BOUND = STOP_SECONDS - 3.0
# A sweep each second (lease_ttl_seconds / 3), so that one is under way at the stop.
LEASE_TTL_SECONDS = 3.0
FROZEN_BEFORE_THE_STOP = 1.1
CUT_SHORT = "lock watcher or sweeper did not end within the stop's bound: cut short"
SWEEPER = "lost-job sweeper"
# Turns of the event loop a cancelled sweep takes to end (its request's future cancelled).
TURNS = 20


@pytest.mark.parametrize(
    ("thawed_into_the_stop", "sweep_finished"),
    [(SWEEP_BOUND - 2, True), (SWEEP_BOUND + 2, False)],
    ids=["thawed-within-the-bound", "thawed-past-the-bound"],
)
async def test_a_runners_stop_cuts_a_sweep_waiting_on_a_frozen_nats_short(
    settings: Settings,
    own_nats: EmbeddedNats,
    thawed_into_the_stop: float,
    sweep_finished: bool,
) -> None:
    """NATS thawed 1 s into the stop: the sweep gets its answers and ends, nothing said.
    Thawed 5 s into it, past the 3 s the sweep may take: the runner's run is over before the
    thaw, its sweep cut short (said in the log as a warning), nothing of it left running."""
    private = msgspec.structs.replace(
        settings,
        nats_url=own_nats.url,
        lease_ttl_seconds=LEASE_TTL_SECONDS,
        stop_seconds=STOP_SECONDS,
    )
    assert own_nats.proc is not None
    nats_pid = own_nats.proc.pid
    async with running_runner(private) as runner:
        (sweeper,) = [t for t in asyncio.all_tasks() if t.get_name() == SWEEPER]
        sweep_ended_at_the_thaw: list[bool] = []

        def thaw_nats() -> None:
            sweep_ended_at_the_thaw.append(sweeper.done())
            thaw(nats_pid)

        freeze(nats_pid)
        thawing = asyncio.get_running_loop().call_later(
            FROZEN_BEFORE_THE_STOP + thawed_into_the_stop, thaw_nats
        )
        try:
            await asyncio.sleep(FROZEN_BEFORE_THE_STOP)
            runner.stop.set()
            await asyncio.wait_for(asyncio.shield(runner.task), 60)
            # The cases are what they say they are: within the bound, NATS was thawed during
            # the stop with a sweep still waiting on it (the sweeper, stopped, would otherwise
            # have ended); past it, the run was over before the thaw.
            assert sweep_ended_at_the_thaw == ([False] if sweep_finished else [])
            for _ in range(TURNS):
                await asyncio.sleep(0)
            assert sweeper.done(), "the runner's stop left its sweep running"
        finally:
            thawing.cancel()
            thaw(nats_pid)
        said = [e for e in runner.logs if e["event"] == CUT_SHORT]
        assert len(said) == (0 if sweep_finished else 1), said
        assert all(e["log_level"] == "warning" for e in said), said
        assert SWEEPER in said[0]["tasks"] if said else True
