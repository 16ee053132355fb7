"""The API's shutdown waits for its artifact sweeper at most ``SWEEPER_STOP_SECONDS``, even when
the sweeper's pass lost its cancel in a request to a frozen NATS.

A pass whose cancel is lost (nats-py swallows one that arrives while it flushes, 3.11's
wait_for one that comes with the reply) goes on until its request times out (nats-py's 5 s).
The shutdown waited for the sweeper with no bound: as long as any pass went on. Here NATS is
frozen for real, the pass's real request waits for it, and the bound is just shorter or just
longer than that request's timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest
from litestar import Litestar
from structlog.testing import capture_logs

from jobrunner.common import artifactpurges
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.api import context
from tests.freeze import freeze, thaw
from tests.lostcancel import CancelLost

REQUEST_SECONDS = 5.0  # nats-py's JetStream request timeout, the API's (nc.jetstream())


class CancelLostInARequest(CancelLost):
    """``artifactpurges.sweep`` run for real; the first cancel arriving while it runs is lost:
    the pass goes on until its request ends, as after a cancel nats-py swallowed (``CancelLost``;
    ``under_way``: a pass has begun). ``sweeper``: the task running the pass."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.sweeper: asyncio.Task[object] | None = None
        self._real_sweep: Callable[..., Awaitable[None]] = artifactpurges.sweep
        monkeypatch.setattr(artifactpurges, "sweep", self._sweep)

    async def _sweep(self, *args: object) -> None:
        self.sweeper = asyncio.current_task()
        await self.run(self._real_sweep(*args))


@pytest.mark.parametrize(
    ("bound", "waited_for"),
    [(REQUEST_SECONDS + 3, True), (REQUEST_SECONDS - 3, False)],
    ids=["request-within-the-bound", "request-past-the-bound"],
)
async def test_the_apis_shutdown_waits_for_a_sweeper_deaf_to_its_cancel_at_most_its_bound(
    settings: Settings,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    bound: float,
    waited_for: bool,
) -> None:
    """A sweeper whose pass ends 5 s after its stop is waited for with a bound of 8 s; with one
    of 2 s it is left, said in the log, and the API stops all the same."""
    assert own_nats.proc is not None
    monkeypatch.setattr(artifactpurges, "SWEEPER_STOP_SECONDS", bound)
    losing = CancelLostInARequest(monkeypatch)
    api = msgspec.structs.replace(settings, nats_url=own_nats.url, artifact_purge_sweep_seconds=0.2)
    running = context.lifespan(api)(Litestar())
    await running.__aenter__()
    frozen = exited = False
    try:
        freeze(own_nats.proc.pid)
        frozen = True
        losing.under_way.clear()  # a pass begun after the freeze: its request is not answered
        await asyncio.wait_for(losing.under_way.wait(), 30)
        with capture_logs() as logs:
            exited = True
            await asyncio.wait_for(running.__aexit__(None, None, None), 60)
        assert losing.lost == 1
        assert losing.sweeper is not None
        assert losing.sweeper.done() == waited_for
        left = [e for e in logs if e["event"] == "a loop did not end on its stop: left running"]
        assert [e["loop"] for e in left] == ([] if waited_for else ["artifact-sweeper"])
    finally:
        if frozen:
            thaw(own_nats.proc.pid)
        if not exited:
            await running.__aexit__(None, None, None)
        if losing.sweeper is not None:
            # A failed test leaves no sweeper on the loop the later tests share.
            losing.sweeper.cancel()
            await asyncio.wait({losing.sweeper}, timeout=30)
