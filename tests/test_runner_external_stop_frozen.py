"""An external job's end unsubscribes its notices within ``UNSUBSCRIBE_STOP_SECONDS`` even when
nats-py cannot take the UNSUB (NATS frozen while much was being sent: see
tests/tools/clogged_nats.py). Its ``wait`` waited for the thaw, and the job's end with it: the
runner's stop left the job running, and its exit then waited on it."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from structlog.testing import capture_logs

from jobrunner.common import eventstore
from jobrunner.common.jobtypes import JobType
from jobrunner.common.settings import Settings
from jobrunner.contracts import events
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner import external
from jobrunner.services.runner.external import STOPPED, ExternalExecution
from jobrunner.services.runner.journal import JobJournal
from tests.freeze import freeze, thaw, thaw_later
from tests.tools.clogged_nats import (
    BOUND,
    STOP_ENDS_WITHIN,
    STOP_GIVEN_UP_AFTER,
    THAWED_EITHER_SIDE_OF_THE_BOUND,
    clogged,
)

NOT_UNSUBSCRIBED = (
    "an external job's subscriptions not unsubscribed in time: the UNSUB is queued, sent when "
    "NATS takes it"
)
EXTERNAL = JobType(name="worker", external=True, heartbeat_seconds=3600)


@THAWED_EITHER_SIDE_OF_THE_BOUND
async def test_an_external_jobs_end_unsubscribes_within_the_bound(
    settings: Settings,
    own_nats: EmbeddedNats,
    monkeypatch: pytest.MonkeyPatch,
    frozen_for: float,
    unsubscribed: bool,
) -> None:
    """NATS thawed 1 s into the job's stop: unsubscribed, nothing said. Thawed 5 s into it,
    past the 3 s bound: left to the connection's close, said in the log, and the job ends at
    the bound; it used to wait for the thaw."""
    assert own_nats.proc is not None
    pid = own_nats.proc.pid
    monkeypatch.setattr(eventstore, "UNSUBSCRIBE_STOP_SECONDS", BOUND)
    # No poll of the stream meanwhile: a read sent to the frozen NATS would hold the job's
    # `wait` for its own timeout, and this test is about the unsubscribe after it.
    monkeypatch.setattr(external, "MAX_POLL_SECONDS", 3600.0)
    private = msgspec.structs.replace(settings, nats_url=own_nats.url)
    nc = await eventstore.connect(private, "runner")
    frozen = False
    thawing: asyncio.TimerHandle | None = None
    try:
        js = nc.jetstream()
        names = Names(private.prefix)
        await eventstore.ensure_topology(js, names, private)
        request = events.JobRequested(job_id="external-stop-frozen", job_type=EXTERNAL.name)
        execution = ExternalExecution(nc, JobJournal(nc, js, names, "runner"), request, EXTERNAL)
        await execution.start()
        waiting = asyncio.ensure_future(execution.wait())
        freeze(pid)
        frozen = True
        await clogged(nc)
        assert not waiting.done()
        thawing = thaw_later(frozen_for, pid)
        with capture_logs() as logs:
            began = time.monotonic()
            await execution.stop(0)
            done, _ = await asyncio.wait({waiting}, timeout=STOP_GIVEN_UP_AFTER)
            took = time.monotonic() - began
        assert done, "the job's end waited for a frozen NATS"
        assert waiting.result() == STOPPED
        said = [e for e in logs if e["event"] == NOT_UNSUBSCRIBED]
        assert len(said) == (0 if unsubscribed else 1), (said, f"ended after {took:.1f} s")
        assert all(e["log_level"] == "warning" for e in said), said
        assert took < STOP_ENDS_WITHIN, f"ended after {took:.1f} s"
    finally:
        if thawing is not None:
            thawing.cancel()
        if frozen:
            thaw(pid)
        await eventstore.close(nc)
