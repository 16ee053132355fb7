"""``eventstore``'s publishes (``publish_acked``, ``publish_many``'s pipeline) whose ack a NATS
restart lost: their callers' retries send them again as soon as nats-py is connected again, not
after the ack timeout, and JetStream keeps one copy. A runner's job ending (``endings.store``
inside ``retry.until_done``, as ``journal`` calls it), the API's batch submit
(``publish_many``) and a cancel of a pending job (``endings.publish_with_endings``).

The harness of ``tests/test_ackinbox_restart.py``: a real nats-server SIGKILLed and started
again behind ``tests/ackholding_proxy.py``, which drops the publish's ack with the connection.
Every ack timeout is 30 s (the ack inbox's, the JetStream context's, ``publish_many``'s ack
wait) and each publish must be over within 10 s of the restart: only the reconnect can have
ended it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from jobrunner.common import ackinbox, endings, eventstore, retry
from jobrunner.contracts import codec, events
from jobrunner.contracts.events import JobStatus
from tests.tools.restartable_nats import ACK_TIMEOUT, SOON, progress, restartable

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def long_ack_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ackinbox, "ACK_TIMEOUT", ACK_TIMEOUT)
    monkeypatch.setattr(eventstore, "ACK_WAIT_SECONDS", ACK_TIMEOUT)


async def test_a_job_ending_whose_ack_a_restart_lost_is_stored_once_and_soon(
    tmp_path: Path,
) -> None:
    """The runner's ending, conditional on its ``running``: the lost ack fails at the
    reconnect, the retry's copy is a duplicate, and the read after it finds the ending."""
    async with restartable(tmp_path) as running:
        js = running.nc.jetstream(timeout=ACK_TIMEOUT)
        names = running.names
        job_id = "lostending"
        started = events.StatusChanged(
            job_id=job_id, event_id=f"{job_id}-running", status=JobStatus.RUNNING
        )
        after = await eventstore.publish(js, names, started)
        ending = events.StatusChanged(
            job_id=job_id,
            event_id=events.terminal_event_id(job_id),
            status=JobStatus.COMPLETED,
            exit_code=0,
        )
        subject = names.job_kind_subject(job_id, "status")
        running.proxy.arm(subject)
        storing = asyncio.create_task(
            retry.until_done(lambda: endings.store(js, names, ending, after=after), "the end")
        )
        await running.strike(subject)
        restarted = time.monotonic()
        done, _ = await asyncio.wait((storing,), timeout=SOON)
        assert storing in done, f"the ending not stored {SOON} s after the restart"
        stored = storing.result()
        # Its first copy was stored before the kill: the retry finds it.
        assert stored.first == ending
        assert stored.seq > after
        assert await running.stored(subject) == (2, codec.encode(ending))
        assert time.monotonic() - restarted < SOON


async def test_a_pipelined_batch_whose_acks_a_restart_lost_is_stored_once_and_soon(
    tmp_path: Path,
) -> None:
    """``publish_many`` (a batch submit's jobs): every event whose ack went with the
    connection is published again at the reconnect, each stored once."""
    async with restartable(tmp_path) as running:
        js = running.nc.jetstream(timeout=ACK_TIMEOUT)
        names = running.names
        batch = [progress(f"piped{i}", i) for i in range(5)]
        running.proxy.arm(names.subject(batch[0]))
        sending = asyncio.create_task(eventstore.publish_many(js, names, batch))
        await running.strike(names.subject(batch[0]))
        restarted = time.monotonic()
        done, _ = await asyncio.wait((sending,), timeout=SOON)
        assert sending in done, f"the batch not stored {SOON} s after the restart"
        assert sending.result() > 0
        for event in batch:
            assert await running.stored(names.subject(event)) == (1, codec.encode(event))
        assert time.monotonic() - restarted < SOON


async def test_a_cancel_ending_whose_ack_a_restart_lost_is_stored_once_and_soon(
    tmp_path: Path,
) -> None:
    """A cancel of a pending job (``publish_with_endings``: its ending conditional on an empty
    status subject): published again at the reconnect, a duplicate, then found stored."""
    async with restartable(tmp_path) as running:
        js = running.nc.jetstream(timeout=ACK_TIMEOUT)
        names = running.names
        job_id = "lostcancel"
        cancelled = events.StatusChanged(
            job_id=job_id,
            event_id=events.terminal_event_id(job_id),
            status=JobStatus.CANCELLED,
            cancelled_by="tester",
        )
        subject = names.job_kind_subject(job_id, "status")
        running.proxy.arm(subject)
        sending = asyncio.create_task(endings.publish_with_endings(js, names, [cancelled]))
        await running.strike(subject)
        restarted = time.monotonic()
        done, _ = await asyncio.wait((sending,), timeout=SOON)
        assert sending in done, f"the cancel not stored {SOON} s after the restart"
        last, outcomes = sending.result()
        assert outcomes[job_id].first == cancelled
        assert last == outcomes[job_id].seq
        assert await running.stored(subject) == (1, codec.encode(cancelled))
        assert time.monotonic() - restarted < SOON
