"""The lease under NATS faults: kept through an outage shorter than it, given up (and the tool
stopped) before an outage longer than it could let another runner take the slot."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError

from jobrunner.common import ackinbox, eventstore
from jobrunner.common.ackinbox import ACK_TIMEOUT
from jobrunner.common.settings import Settings
from jobrunner.common.slots import (
    UNKNOWN_HOLDER,
    Lease,
    RunRecord,
    SlotTable,
    SlotValue,
    _deleted,
    run_key,
    same_holder,
)
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.services.runner.running import RunnerIdentity
from tests.freeze import freeze, thaw
from tests.system import System
from tests.tools.runners import (
    RUNNER_TYPES,
    dead_runner_beside,
    lines_of,
    start_job,
    wait_file,
    wait_status,
)
from tests.tools.slot_leases import held, slot_table

# Long enough that a loaded machine keeps a live lease; the pauses below are chosen around it.
TTL = 6.0
# The pause between an ended job's writes sent again (the runner's RETRY_PAUSE_SECONDS).
RETRY_PAUSE = 0.1


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=RUNNER_TYPES, lease_ttl_seconds=TTL)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own: it gets paused, so the shared one is never touched."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    yield server
    resume(server)
    server.stop()


def pause(server: EmbeddedNats) -> None:
    assert server.proc is not None
    freeze(server.proc.pid)


def resume(server: EmbeddedNats) -> None:
    assert server.proc is not None
    if server.proc.poll() is None:
        thaw(server.proc.pid)


def test_only_the_same_runner_process_counts_as_the_same_holder() -> None:
    """A lease is adopted as one's own only when the same runner process wrote it for the job."""
    mine = held("job")
    assert same_holder(mine, mine)
    assert not same_holder(mine, held("other job"))
    assert not same_holder(mine, held("job", runner_id="other runner"))
    restarted = msgspec.structs.replace(mine, runner_pid=(mine.runner_pid or 0) + 1)
    assert not same_holder(mine, restarted)
    assert not same_holder(mine, msgspec.structs.replace(mine, phase="reserved"))


async def test_renewal_stored_late_is_adopted_instead_of_losing_the_lease(
    settings: Settings,
) -> None:
    """A renewal the server stored after the runner gave up on it does not stop a healthy job."""
    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("job.late", held("late"))
        assert lease is not None
        # Stands for the renewal that timed out in the runner but reached the server anyway.
        late = await slots.renew(lease)
        assert late is not None
        renewed = await slots.renew(lease)  # the runner still names the older revision
        assert renewed is not None
        assert renewed.revision > late.revision


async def test_renewals_in_flight_at_once_all_end_with_the_lease_kept(settings: Settings) -> None:
    """Renewals naming one revision, as a keeper has in flight after an outage: one is stored,
    each other is refused, reads the key and writes again against the rest. None of them says
    the lease is lost while the key holds it (they used to give up after three tries, and the
    keeper, meeting that answer first, stopped a healthy job: LEASE_LOST)."""
    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("job.inflight", held("inflight"))
        assert lease is not None
        renewed = await asyncio.gather(*(slots.renew(lease) for _ in range(8)))
        assert all(each is not None for each in renewed), renewed
        current = await slots.current(lease.key)
        assert current is not None
        assert current.revision == max(each.revision for each in renewed if each is not None)
        assert same_holder(current.value, lease.value)


async def test_renewal_of_a_slot_another_runner_took_is_refused(settings: Settings) -> None:
    """Once another runner holds the slot, the old holder's renewal is refused (the fence)."""
    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("slot.shared", held("first"))
        assert lease is not None
        assert await slots.release(lease)
        other = await slots.try_acquire("slot.shared", held("second", runner_id="other"))
        assert other is not None
        assert await slots.renew(lease) is None


async def _kept_lease(settings: Settings, slots: SlotTable, job_id: str) -> Any:
    from jobrunner.services.runner.lease import LeaseKeeper

    lease = await slots.try_acquire(f"job.{job_id}", held(job_id))
    assert lease is not None

    async def nothing() -> None:
        return None

    keeper = LeaseKeeper(slots, lease, settings.lease_ttl_seconds, nothing)
    keeper.start()
    return keeper


async def test_tool_is_not_spawned_on_a_lease_unconfirmed_past_its_deadline(
    settings: Settings,
) -> None:
    """A lease last confirmed longer ago than its deadline is not taken as ours before a spawn."""
    from jobrunner.services.runner.lease import LeaseKeeper

    async def nothing() -> None:
        return None

    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("job.stale", held("stale"))
        assert lease is not None
        # As if the runner had stalled (or NATS had been away) since the claim.
        stale = msgspec.structs.replace(lease, sent_at=lease.sent_at - TTL)
        keeper = LeaseKeeper(slots, stale, TTL, nothing)
        keeper.start()
        assert not await keeper.confirm()
        await keeper.stop()
        assert keeper.reason == "deadline"


async def test_lease_kept_through_a_pause_shorter_than_its_deadline(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS paused for less than the lease can survive: the lease is still ours afterwards."""
    from jobrunner.services.runner.lease import RETRY_PAUSE_SECONDS, safety_margin

    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    async with slot_table(settings) as slots:
        keeper = await _kept_lease(settings, slots, "short")
        # Just below the outage a lease always survives: its deadline (TTL - margin after the
        # last confirmed renewal) less one request's timeout and one retry pause (3.8 s at a 6 s
        # TTL), with slack for a loaded machine.
        survivable = TTL - safety_margin(TTL) - keeper.request_timeout - RETRY_PAUSE_SECONDS
        pause(own_nats)
        await asyncio.sleep(survivable - 0.8)  # the outage itself, not a synchronisation
        resume(own_nats)
        assert await keeper.confirm()
        lease = await keeper.stop()
        assert not keeper.lost.is_set()
        assert await slots.release(lease)


async def test_lease_kept_through_a_pause_starting_just_before_a_renewal_is_due(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS paused from just before a renewal falls due, for longer than a third of the TTL
    would have survived: the lease is still ours afterwards."""
    from jobrunner.services.runner.lease import LeaseKeeper, survivable_outage

    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("job.due", held("due"))
        assert lease is not None
        renewed = asyncio.Event()

        async def after_renewal() -> None:
            renewed.set()

        keeper = LeaseKeeper(slots, lease, TTL, after_renewal)
        keeper.start()
        async with asyncio.timeout(TTL):
            await renewed.wait()  # a renewal confirmed: the interval starts now
        due = keeper.lease.sent_at + keeper.interval
        # A paused server answers the request waiting in its socket once resumed, so the outage
        # may last until just before the deadline: 3.5 s at a 6 s TTL (0.6 s of slack left for
        # a loaded machine); with renewals every third of the TTL it was 2.5 s.
        outage = 2.9
        assert outage < survivable_outage(TTL) - 0.5
        await asyncio.sleep(max(0.0, due - 0.1 - time.monotonic()))  # the fault's moment
        pause(own_nats)
        await asyncio.sleep(outage)  # the outage itself, not a synchronisation
        resume(own_nats)
        assert await keeper.confirm()
        lease = await keeper.stop()
        assert not keeper.lost.is_set()
        assert await slots.release(lease)


async def test_slot_freed_at_once_when_the_job_ends_while_its_renewals_wait_in_a_pause(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """The job ends while renewals sent into a paused NATS are unanswered: the keeper stops
    with the revision it last confirmed, and the server, once it runs again, stores the first
    of those renewals before the release, which names the older revision and is refused. The
    release reads the key, finds our own lease at the newer revision and deletes that: the next
    job on the lock takes the slot at once. (It used to stay held until the lease expired, a
    TTL later.)"""
    from jobrunner.services.runner.lease import LeaseKeeper

    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("slot.ending", held("ending"))
        assert lease is not None
        renewed = asyncio.Event()

        async def after_renewal() -> None:
            renewed.set()

        keeper = LeaseKeeper(slots, lease, TTL, after_renewal)
        keeper.start()
        async with asyncio.timeout(TTL):
            await renewed.wait()  # a renewal confirmed: the interval starts now
        due = keeper.lease.sent_at + keeper.interval
        await asyncio.sleep(max(0.0, due - 0.1 - time.monotonic()))  # the fault's moment
        pause(own_nats)
        # The outage itself: long enough for the keeper to send a renewal and one resend.
        await asyncio.sleep(2 * keeper.request_timeout + 0.3)
        ended = await keeper.stop()  # the job ended: its attempts in flight are abandoned
        assert not keeper.lost.is_set()
        releasing = asyncio.ensure_future(slots.release(ended))
        await asyncio.sleep(0.1)  # the release waits in the server's socket behind them
        resume(own_nats)
        assert await releasing
        assert await slots.current(ended.key) is None
        assert await slots.try_acquire(ended.key, held("next", runner_id="other")) is not None


# nats-py's JetStream request timeout, which a release's read of the key waits at most.
READ_TIMEOUT = 5.0


async def test_a_release_whose_read_meets_a_pause_leaves_the_lease_to_expire(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """A release refused (a renewal of ours stored late) reads the key to follow it; NATS pauses
    just then, past the read's timeout: the release answers False (the lease left to expire),
    as a refused release did before it read the key, rather than raise ``TimeoutError`` at the
    end of a job."""
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("slot.read-in-a-pause", held("read-in-a-pause"))
        assert lease is not None
        renewed = await slots.renew(lease)  # the renewal stored late: the release is refused
        assert renewed is not None
        read = slots._read

        async def read_in_a_pause(key: str) -> Any:
            pause(own_nats)  # the fault's moment: right after the refused delete
            asyncio.get_running_loop().call_later(READ_TIMEOUT + 0.5, resume, own_nats)
            return await read(key)

        slots._read = read_in_a_pause  # type: ignore[method-assign]
        assert not await slots.release(lease)
        slots._read = read  # type: ignore[method-assign]
        current = await slots.current(lease.key)  # answered once NATS runs again
        assert current is not None
        assert current.revision == renewed.revision  # left to expire, not deleted


async def test_release_leaves_another_holders_lease_alone(settings: Settings) -> None:
    """A release refused because the slot passed to another holder deletes nothing."""
    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("slot.passed", held("first"))
        assert lease is not None
        assert await slots.release(lease)
        other = await slots.try_acquire("slot.passed", held("second", runner_id="other"))
        assert other is not None
        assert not await slots.release(lease)
        current = await slots.current("slot.passed")
        assert current is not None
        assert current.revision == other.revision


# Leases one runner keeps at once in the flood test: two runners' worth of internal jobs.
FLOOD_LEASES = 16
# Claims in flight at once in the flood after the pause: more than a runner's fetch brings, few
# enough that a loaded machine's test process still turns its event loop.
FLOOD_CLAIMS = 200


async def flood_the_lock_bucket(nc: Any, names: Names, stop: asyncio.Event) -> None:
    """Claims as a runner sends them once NATS is back: creates in the lock bucket on the
    keepers' connection, ``FLOOD_CLAIMS`` of them waiting for their answers at any time."""
    js = nc.jetstream()

    async def claims(worker: int) -> None:
        sent = 0
        while not stop.is_set():
            sent += 1
            with contextlib.suppress(Exception):  # only the load matters, not the claim
                await js.publish(
                    f"$KV.{names.locks_bucket}.flood.{worker}_{sent}",
                    b"x" * 300,
                    headers={"Nats-Expected-Last-Subject-Sequence": "0", "Nats-TTL": "60s"},
                    timeout=30,
                )

    workers = [asyncio.create_task(claims(worker)) for worker in range(FLOOD_CLAIMS)]
    try:
        await stop.wait()
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def test_leases_kept_through_a_pause_and_the_flood_of_writes_after_it(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """Many leases, NATS paused from just before their renewals fall due for nearly as long as
    they survive, and a flood of claims on the same connection the moment it runs again: every
    lease is kept, each by the renewal it sent first in the pause, which the server answers
    first. The keeper used to wait for its last attempt instead, which the server refuses (the
    first changed the revision), then read the key and write again, behind the flood (a probe
    with half a second of slack and up to 20,000 claims in flight: confirmed 1 to 2.4 s after
    NATS was back, 12 of 16 leases lost; with the first attempt kept, 0.3 s, none lost)."""
    from jobrunner.services.runner.lease import LeaseKeeper, survivable_outage

    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    names = Names(settings.prefix)
    keepers: list[LeaseKeeper] = []
    # Per keeper: when each confirmed renewal was checked after, and when it had been sent.
    renewals: list[list[tuple[float, float]]] = [[] for _ in range(FLOOD_LEASES)]

    def recording(i: int) -> Callable[[], Awaitable[None]]:
        async def after_renewal() -> None:
            renewals[i].append((time.monotonic(), keepers[i].lease.sent_at))

        return after_renewal

    nc = await eventstore.connect(settings, "test-lease")
    try:
        await eventstore.ensure_topology(nc.jetstream(), names, settings)
        slots = SlotTable(nc.jetstream(), names, TTL)
        leases = await asyncio.gather(
            *(
                slots.try_acquire(f"job.flood{i}", held(f"flood{i}"), fresh=True)
                for i in range(FLOOD_LEASES)
            )
        )
        for i, lease in enumerate(leases):
            assert lease is not None
            keepers.append(LeaseKeeper(slots, lease, TTL, recording(i)))
            keepers[-1].start()
        due = min(keeper.lease.sent_at for keeper in keepers) + keepers[0].interval
        await asyncio.sleep(max(0.0, due - 0.1 - time.monotonic()))  # the fault's moment
        pause(own_nats)
        # The outage itself: a second shorter than the leases survive (slack for a loaded
        # machine).
        await asyncio.sleep(survivable_outage(TTL) - 1.0)
        resumed = time.monotonic()
        resume(own_nats)
        flood_over = asyncio.Event()
        flooding = asyncio.create_task(flood_the_lock_bucket(nc, names, flood_over))
        try:
            confirmed = [await keeper.confirm() for keeper in keepers]
        finally:
            flood_over.set()
            await flooding
        lost = [keeper.lease.key for keeper in keepers if keeper.lost.is_set()]
        for keeper in keepers:
            await keeper.stop()
        assert lost == []
        assert all(confirmed)
        # The first renewal confirmed once NATS was back is one sent while it was paused.
        first_sent = [next(sent for at, sent in kept if at > resumed) for kept in renewals]
        assert all(sent < resumed for sent in first_sent), [s - resumed for s in first_sent]
    finally:
        await eventstore.close(nc)


# The restart test's lease: long enough for an outage of several attempts, some in the buffer.
RESTART_TTL = 10.0
# The restart test's connection buffer for what waits for NATS to be back.
RESTART_PENDING = 64 * 1024


async def test_lease_kept_through_a_restart_with_the_runners_buffer_full(
    settings: Settings, tmp_path: Path
) -> None:
    """nats-server killed just before a renewal is due and restarted within the outage the lease
    survives, the connection's buffer full meanwhile (a chatty tool's retried publishes): the
    first attempts wait in the buffer, the later ones fail at once and the keeper pauses between
    them. Once NATS is back the first attempt is stored and confirms the lease at once, the
    others are refused. The keeper used to see that only after its pause, with the refusals
    beside it, and stop the job if it met one first (a refused attempt fighting the others gave
    up after three tries): a review's probe lost 4 of 12 such leases, none since."""
    from jobrunner.services.runner.lease import LeaseKeeper, survivable_outage

    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    restarted: EmbeddedNats | None = None
    settings = msgspec.structs.replace(settings, nats_url=server.url, lease_ttl_seconds=RESTART_TTL)
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "test-lease", pending_size=RESTART_PENDING)
    try:
        await eventstore.ensure_topology(nc.jetstream(), names, settings)
        slots = SlotTable(nc.jetstream(), names, RESTART_TTL)
        lease = await slots.try_acquire("job.restart", held("restart"), fresh=True)
        assert lease is not None
        renewed = asyncio.Event()
        # When each confirmed renewal was checked after, and when it had been sent.
        renewals: list[tuple[float, float]] = []

        async def after_renewal() -> None:
            renewals.append((time.monotonic(), keeper.lease.sent_at))
            renewed.set()

        keeper = LeaseKeeper(slots, lease, RESTART_TTL, after_renewal)
        keeper.start()
        async with asyncio.timeout(RESTART_TTL):
            await renewed.wait()  # a renewal confirmed: the interval starts now
        due = keeper.lease.sent_at + keeper.interval
        await asyncio.sleep(max(0.0, due - 0.05 - time.monotonic()))  # the fault's moment
        killed = time.monotonic()
        server.kill()
        # The outage itself: attempts sent in its first 3.3 s wait in the buffer...
        await asyncio.sleep(3.3)
        filler = RESTART_PENDING - nc._pending_data_size - 100
        await nc.publish("filler", b"x" * filler)
        # ...and the ones after it, with the buffer full, fail at once.
        await asyncio.sleep(1.1)
        restarted = EmbeddedNats(tmp_path / "nats", port=server.port)
        await asyncio.to_thread(restarted.start)
        back = time.monotonic()
        assert back - killed < survivable_outage(RESTART_TTL) - 1.0
        assert await keeper.confirm()
        lease = await keeper.stop()
        assert not keeper.lost.is_set(), keeper.reason
        # The first renewal confirmed once NATS was back is one sent while it was down.
        first_sent = next(sent for at, sent in renewals if at > back)
        assert first_sent < back, first_sent - back
        assert await slots.release(lease)
    finally:
        await eventstore.close(nc)
        for each in (server, restarted):
            if each is not None and each.running:
                each.stop()


async def test_lease_given_up_before_a_pause_longer_than_its_ttl_ends(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS paused for longer than the TTL: the runner gives the lease up before it could pass."""
    from jobrunner.services.runner.lease import safety_margin

    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    async with slot_table(settings) as slots:
        keeper = await _kept_lease(settings, slots, "long")
        paused_at = time.monotonic()
        pause(own_nats)
        try:
            async with asyncio.timeout(TTL + 1):
                await keeper.lost.wait()
            given_up_at = time.monotonic()
        finally:
            resume(own_nats)
        await keeper.stop()
        assert keeper.reason == "deadline"
        # Measured from the last confirmed renewal, which was sent before the pause.
        assert given_up_at < paused_at + TTL - safety_margin(TTL) / 2


async def test_job_goes_on_through_a_short_nats_pause_and_stores_every_line_once(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """NATS paused briefly while a tool prints: the job completes, every line stored once."""
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    system = System(settings)
    times = tmp_path / "times"
    try:
        await system.start()
        async with system.client() as client:
            job_id = await start_job(
                client, "timed", times_dir=str(times), label="a", lines=150, interval="0.03"
            )
            await wait_file(times / "a.start")
            pause(own_nats)
            await asyncio.sleep(1.5)  # the outage itself: well below the 3.8 s always survived
            resume(own_nats)
            job = await wait_status(client, job_id, "completed", "failed", timeout=60)
            lines = await lines_of(client, job_id)
    finally:
        resume(own_nats)
        await system.stop()
    assert job["status"] == "completed", job
    assert [ln["text"] for ln in lines] == [f"INFO line {i}" for i in range(1, 151)]
    assert [ln["seq"] for ln in lines] == list(range(1, 151))


async def test_nats_paused_longer_than_the_ttl_stops_the_tool_before_anyone_else_runs(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """NATS paused past the lease TTL: the tool stops in time, its lines are kept, and the
    next job on the lock starts only after it ended."""
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    system = System(settings)
    times = tmp_path / "times"
    try:
        await system.start()
        await system.start_runner("second")
        async with system.client() as client:
            first = await start_job(
                client, "timed", times_dir=str(times), label="a", lines=100_000, interval="0.02"
            )
            await wait_file(times / "a.start")
            second = await start_job(
                client, "timed", times_dir=str(times), label="b", lines=20, interval="0.02"
            )
            paused_at = time.time()
            pause(own_nats)
            await asyncio.sleep(TTL + 2)  # the outage itself, longer than the TTL
            resume(own_nats)
            lost = await wait_status(client, first, "failed", "completed", timeout=60)
            after = await wait_status(client, second, "completed", "failed", timeout=60)
            lines = await lines_of(client, first)
    finally:
        resume(own_nats)
        await system.stop()
    assert lost["status"] == "failed"
    assert lost["error"]["code"] in ("LEASE_LOST", "RUNNER_LOST"), lost
    first_end, printed = (times / "a.end").read_text().split()
    # Stopped before the server could let the lease expire (at the earliest the TTL after the
    # last renewal, sent before the pause).
    assert float(first_end) < paused_at + TTL
    assert after["status"] == "completed", after
    assert float((times / "b.start").read_text()) > float(first_end)
    # Every line it printed is stored, once and in order (it may have printed one more line
    # than it wrote down before it was stopped).
    assert len(lines) in (int(printed), int(printed) + 1)
    assert [ln["text"] for ln in lines] == [f"INFO line {i}" for i in range(1, len(lines) + 1)]


async def test_a_fresh_slot_is_created_at_once_and_still_refused_while_held(
    settings: Settings,
) -> None:
    """A job's own slot taken without a read first: refused while another holds it, and taken
    again once released (over the key's tombstone)."""
    async with slot_table(settings) as slots:
        first = await slots.try_acquire("job.fresh", held("fresh"), fresh=True)
        assert first is not None
        taken = await slots.try_acquire("job.fresh", held("fresh", runner_id="other"), fresh=True)
        assert taken is None
        assert await slots.release(first)
        again = await slots.try_acquire("job.fresh", held("fresh", runner_id="other"), fresh=True)
        assert again is not None
        assert await slots.renew(first) is None


async def test_a_fresh_slot_reserved_by_the_api_becomes_the_jobs_lease(settings: Settings) -> None:
    """A slot the API reserved for the job is adopted even when taken as fresh."""
    async with slot_table(settings) as slots:
        reserved = msgspec.structs.replace(held("mine"), phase="reserved")
        assert await slots.try_acquire("job.mine", reserved) is not None
        lease = await slots.try_acquire("job.mine", held("mine"), fresh=True)
        assert lease is not None
        assert lease.value.phase == "held"


async def test_a_fresh_slot_and_its_run_record_are_written_in_one_go(settings: Settings) -> None:
    """A job's first claim stores its lease and its run record together: a sweep that finds the
    record finds the job's live lease beside it."""
    async with slot_table(settings) as slots:
        record = RunRecord(job_id="together", slot_key="job.together", runner_id="me")
        lease, recorded = await slots.create_recorded("job.together", held("together"), record)
        assert lease is not None
        assert recorded
        assert await slots.run_record("together") == record
        current = await slots.current("job.together")
        assert current is not None
        assert current.revision == lease.revision
        # Stored after the lease: a sweep reading the record finds the lease already there.
        stored = await (await slots.kv()).get("run.together")
        assert stored.revision is not None
        assert stored.revision > lease.revision
        assert await slots.renew(lease) is not None


async def _ended(slots: SlotTable, job_id: str) -> Lease:
    """A job's lease and run record, as its claim writes them."""
    key = f"job.{job_id}"
    record = RunRecord(job_id=job_id, slot_key=key, runner_id="me")
    lease, recorded = await slots.create_recorded(key, held(job_id), record)
    assert lease is not None
    assert recorded
    return lease


async def _gone(slots: SlotTable, job_id: str, lease: Lease) -> bool:
    return await slots.run_record(job_id) is None and await slots.current(lease.key) is None


def _sends_counted(slots: SlotTable) -> list[tuple[str, int]]:
    """Every message the table's connection publishes from now on: its subject, and how many
    writes await their ack (this one included) as it is sent."""
    nc = slots._js._nc
    publish = nc.publish
    sent: list[tuple[str, int]] = []

    async def counted(subject: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((subject, len(slots._acks._waiting)))
        return await publish(subject, *args, **kwargs)

    nc.publish = counted  # type: ignore[method-assign]
    return sent


async def test_an_ended_jobs_record_and_lease_go_in_one_round_trip_the_record_first(
    settings: Settings,
) -> None:
    """At a job's end its run record's delete and its lease's are sent together (the lease's
    before the record's is answered), and stored in that order: the record gone first, so a
    sweep never finds the record of a job whose lease is gone (which it would end)."""
    async with slot_table(settings) as slots:
        lease = await _ended(slots, "ending")
        sent = _sends_counted(slots)
        stored = _acks_kept(slots)
        assert await slots.end_run("ending", lease, RETRY_PAUSE)
        subject = slots._subject
        assert sent == [(subject(run_key("ending")), 1), (subject(lease.key), 2)]
        assert await _gone(slots, "ending", lease)
        # Each write's sequence in the bucket's one stream, from its ack (the record's marker
        # removes itself in a second: read back, it may be gone already).
        [forgotten, released] = [ackinbox.read_ack(ack.result()).seq for ack in stored]
        assert forgotten < released


def _acks_kept(slots: SlotTable) -> list[asyncio.Future[Msg]]:
    """The ack futures of the writes the table sends from now on without waiting for their
    ack at once (``publish_headed_soon``), in the order sent."""
    acks = slots._acks
    send = acks.publish_headed_soon
    kept: list[asyncio.Future[Msg]] = []

    async def keeping(*args: Any) -> asyncio.Future[Msg]:
        kept.append(await send(*args))
        return kept[-1]

    acks.publish_headed_soon = keeping  # type: ignore[method-assign]
    return kept


async def _run_subjects(slots: SlotTable) -> dict[str, int]:
    """The bucket's ``run.`` subjects holding a message (a record, or a removed one's marker),
    each handed to every runner's sweep, every round."""
    bucket = slots._names.locks_bucket
    info = await slots._js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.run.>")
    return info.state.subjects or {}


async def test_a_give_back_leaves_a_run_record_written_after_it_read_it(
    settings: Settings,
) -> None:
    """A give-back removes the record it read, never one written after it (another runner's
    claim of the job): its purge names the revision read, as its delete did."""
    async with slot_table(settings) as slots:
        mine = RunRecord(job_id="regiven", slot_key="job.regiven", runner_id="me")
        await slots.record_run(mine)
        theirs = msgspec.structs.replace(mine, runner_id="another")
        read_raw = slots._read_raw

        async def rewritten_after_the_read(key: str) -> Any:
            read = await read_raw(key)
            if key == run_key("regiven"):
                await slots.record_run(theirs)
            return read

        slots._read_raw = rewritten_after_the_read  # type: ignore[method-assign]
        try:
            await slots.give_back("job.regiven", held("regiven"))
        finally:
            slots._read_raw = read_raw  # type: ignore[method-assign]
        assert await slots.run_record("regiven") == theirs


async def test_a_run_records_conditional_removal_leaves_a_record_written_since(
    settings: Settings,
) -> None:
    """The record's purge names a revision: refused once a record was written since."""
    async with slot_table(settings) as slots:
        record = RunRecord(job_id="rewritten", slot_key="job.rewritten", runner_id="me")
        await slots.record_run(record)
        read = await slots.last_revision(run_key("rewritten"))
        again = msgspec.structs.replace(record, runner_id="another")
        await slots.record_run(again)
        with pytest.raises(KeyWrongLastSequenceError):
            await _deleted(await slots._send_forget("rewritten", read))
        assert await slots.run_record("rewritten") == again
        current = await slots.last_revision(run_key("rewritten"))
        await _deleted(await slots._send_forget("rewritten", current))
        assert await slots.run_record("rewritten") is None


async def test_an_ended_jobs_run_record_leaves_nothing_for_the_sweeps_after_a_moment(
    settings: Settings,
) -> None:
    """An ended job's record is gone from what a sweep lists within seconds, marker and all:
    no runner's sweep is handed it round after round (a delete marker stayed 120 s)."""
    async with slot_table(settings) as slots:
        lease = await _ended(slots, "marked")
        assert await slots.end_run("marked", lease, RETRY_PAUSE)
        subject = slots._subject(run_key("marked"))
        async with asyncio.timeout(30):  # the marker's 1 s, on a loaded machine
            while subject in await _run_subjects(slots):  # noqa: ASYNC110 - the server's TTL
                await asyncio.sleep(0.2)
        # Gone, not replaced by the limit marker the server puts where a delete marker expires.
        assert await slots.last_revision(run_key("marked")) == 0
        assert await slots.run_record("marked") is None


async def test_an_ended_job_sent_into_a_pause_shorter_than_a_writes_timeout_is_cleared(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS paused as the job ends, resumed before the writes time out: both answered."""
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    async with slot_table(settings) as slots:
        lease = await _ended(slots, "short-end")
        pause(own_nats)
        asyncio.get_running_loop().call_later(ACK_TIMEOUT - 2.0, resume, own_nats)
        assert await slots.end_run("short-end", lease, RETRY_PAUSE)
        assert await _gone(slots, "short-end", lease)


async def test_an_ended_job_sent_into_a_pause_longer_than_a_writes_timeout_is_cleared(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS paused as the job ends, past the writes' timeout but within the lease: the pair is
    sent again, and once NATS runs again the record and the lease are gone (the slot freed at
    once, not a TTL later)."""
    # A lease long enough that the pair sent again is answered well before it ends.
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url, lease_ttl_seconds=20.0)
    async with slot_table(settings) as slots:
        lease = await _ended(slots, "longer-end")
        sent = _sends_counted(slots)
        pause(own_nats)
        # Resumed after the first pair timed out and the second was sent.
        asyncio.get_running_loop().call_later(ACK_TIMEOUT + 2.0, resume, own_nats)
        await slots.end_run("longer-end", lease, RETRY_PAUSE)
        assert await _gone(slots, "longer-end", lease)
        pair = [slots._subject(run_key("longer-end")), slots._subject(lease.key)]
        assert [subject for subject, _ in sent][:4] == pair + pair


async def test_an_ended_job_sent_into_a_pause_longer_than_its_lease_raises(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS paused as the job ends for longer than the lease lasts, and than the last pair sent
    before its end waits: the release is given up, as the server lets the lease expire anyway
    (raised, as a release that failed was); the record is left to the sweep."""
    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    async with slot_table(settings) as slots:
        lease = await _ended(slots, "long-end")
        pause(own_nats)
        # Resumed well after the last pair sent within the lease timed out.
        asyncio.get_running_loop().call_later(TTL + ACK_TIMEOUT + 2.0, resume, own_nats)
        try:
            with pytest.raises(nats.errors.TimeoutError):
                await slots.end_run("long-end", lease, RETRY_PAUSE)
            assert time.monotonic() >= lease.sent_at + TTL
        finally:
            resume(own_nats)


async def test_a_fresh_slot_held_by_another_is_not_taken_with_its_run_record(
    settings: Settings,
) -> None:
    """A job's first claim of a slot someone else holds takes nothing: the holder keeps it."""
    async with slot_table(settings) as slots:
        other = await slots.try_acquire("job.held", held("held", runner_id="other"), fresh=True)
        assert other is not None
        record = RunRecord(job_id="held", slot_key="job.held", runner_id="me")
        lease, _ = await slots.create_recorded("job.held", held("held"), record)
        assert lease is None
        assert await slots.renew(other) is not None


async def test_renewal_asked_early_does_not_read_the_cancel_again(settings: Settings) -> None:
    """The renewal that writes a tool's process group at its start makes no cancel read (the
    claim just made it; one round trip less on each job's way to its first line); the next
    renewal on time makes it."""
    from jobrunner.services.runner.lease import LeaseKeeper

    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("job.early", held("early"))
        assert lease is not None
        renewals: asyncio.Queue[int] = asyncio.Queue()
        checks: list[int] = []
        checked = asyncio.Event()
        renew = slots.renew

        async def renew_and_tell(*args: Any, **kwargs: Any) -> Any:
            renewed = await renew(*args, **kwargs)
            if renewed is not None:
                renewals.put_nowait(renewed.revision)
            return renewed

        slots.renew = renew_and_tell  # type: ignore[method-assign]

        async def after_renewal() -> None:
            checks.append(keeper.lease.revision)
            checked.set()

        keeper = LeaseKeeper(slots, lease, TTL, after_renewal)
        keeper.start()
        keeper.rewrite(msgspec.structs.replace(lease.value, pid=123, pgid=123))
        async with asyncio.timeout(TTL):
            early = await renewals.get()  # asked at once, not an interval later
            on_time = await renewals.get()
            await checked.wait()  # the check follows its renewal's confirmation
        assert checks == [on_time]
        assert early < on_time
        assert await slots.release(await keeper.stop())


def _writes_of(nc: Any) -> list[bytes]:
    """Every socket write of ``nc`` from now on (what its flusher hands the transport at once)."""
    transport = nc._transport
    writelines = transport.writelines
    writes: list[bytes] = []

    def recorded(payload: list[bytes]) -> Any:
        writes.append(b"".join(payload))
        return writelines(payload)

    transport.writelines = recorded
    return writes


async def test_what_goes_along_with_a_rewrite_shares_its_socket_write(settings: Settings) -> None:
    """The message sent along with the lease's rewrite at a tool's start (the request's ack)
    goes out in the same socket write as the rewrite: one wake-up of nats-server, not two."""
    from jobrunner.services.runner.lease import LeaseKeeper

    async def nothing() -> None:
        return None

    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("job.along", held("along"))
        assert lease is not None
        nc = slots._js._nc
        keeper = LeaseKeeper(slots, lease, TTL, nothing)
        keeper.start()
        writes = _writes_of(nc)
        sent = asyncio.Event()

        async def along() -> None:
            await nc.publish("test.along", b"ack")
            sent.set()

        keeper.rewrite(msgspec.structs.replace(lease.value, pid=123, pgid=123), along=along)
        async with asyncio.timeout(TTL):
            await sent.wait()
            await nc.flush()  # (a ping answered: what was handed over before it is written)
        assert await slots.release(await keeper.stop())
    lease_subject = slots._subject(lease.key).encode()
    carrying = [w for w in writes if b"test.along" in w]
    assert len(carrying) == 1
    assert lease_subject in carrying[0]


async def test_nothing_goes_along_once_the_keeper_stopped(settings: Settings) -> None:
    """A rewrite asked for once the keeper stopped sends nothing along: the executor sends the
    request's ack itself at the job's end (``JobExecutor.run``)."""
    from jobrunner.services.runner.lease import LeaseKeeper

    async def nothing() -> None:
        return None

    async with slot_table(settings) as slots:
        lease = await slots.try_acquire("job.stopped", held("stopped"))
        assert lease is not None
        keeper = LeaseKeeper(slots, lease, TTL, nothing)
        keeper.start()
        called: list[str] = []

        async def along() -> None:
            called.append("along")

        stopped = await keeper.stop()
        keeper.rewrite(msgspec.structs.replace(lease.value, pid=7, pgid=7), along=along)
        await asyncio.sleep(0.1)  # (time for a keeper that still ran to send it)
        assert called == []
        assert await slots.release(stopped)


async def test_a_claim_stored_after_it_timed_out_is_given_back_before_the_next_delivery(
    settings: Settings, own_nats: EmbeddedNats
) -> None:
    """NATS paused as a runner claims a job's slot: the lease and run record it sent time out in
    the runner but are stored once NATS runs again. The runner gives them back before its
    request comes again, so the next delivery (to any runner) finds the slot free, and no
    expiring lease or record without one makes the job end RUNNER_LOST."""
    from nats.js import api

    from jobrunner.common.slots import slot_key
    from jobrunner.contracts import events
    from jobrunner.services.runner.service import Runner

    settings = msgspec.structs.replace(settings, nats_url=own_nats.url)
    nc = await eventstore.connect(settings, "test-runner")
    try:
        runner = Runner(settings, nc)
        names = runner.names
        await eventstore.ensure_topology(runner.js, names, settings)
        sub = await runner.js.pull_subscribe(
            names.kind_subjects("requested"),
            durable=names.runner_consumer,
            stream=names.stream,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=60.0),
        )
        request = events.JobRequested(job_id="claimed-in-a-pause", job_type="emit")
        await eventstore.publish(runner.js, names, request)
        [msg] = await sub.fetch(1, timeout=10)
        pause(own_nats)
        try:
            handling = asyncio.create_task(runner.requests._handle(msg))
            # The outage itself: past nats-py's 5 s request timeout, so the claim fails in the
            # runner while its writes wait, unread, in the server's socket.
            await asyncio.sleep(7.0)
        finally:
            resume(own_nats)
        async with asyncio.timeout(30):
            await handling
        assert await runner.slots.run_record(request.job_id) is None
        assert await runner.slots.current(slot_key(None, request.job_id)) is None
        # The request comes again, to be run.
        [again] = await sub.fetch(1, timeout=10)
        assert again.metadata.num_delivered == 2
    finally:
        await eventstore.close(nc)


async def test_a_sweep_leaves_alone_a_job_whose_claim_was_given_back_since_it_read_the_records(
    settings: Settings,
) -> None:
    """A sweep that read a job's run record before its runner gave the claim back (after a NATS
    outage) then finds no lease for it: the job, never started and about to be delivered
    again, is not ended RUNNER_LOST."""
    from jobrunner.common.slots import slot_key
    from jobrunner.contracts import events
    from jobrunner.services.runner.service import Runner

    nc = await eventstore.connect(settings, "test-runner")
    try:
        runner = Runner(settings, nc)
        await eventstore.ensure_topology(runner.js, runner.names, settings)
        request = events.JobRequested(job_id="given-back", job_type="emit")
        await eventstore.publish(runner.js, runner.names, request)
        key = slot_key(None, request.job_id)
        held_value = runner.identity.held_value(request.job_id, request.job_type)
        record = runner.identity.run_record(request.job_id, key)
        lease, recorded = await runner.slots.create_recorded(key, held_value, record)
        assert lease is not None
        assert recorded
        [read] = [r for r in await runner.slots.run_records() if r.job_id == request.job_id]
        await runner.requests.claimer.give_back(request, runner.job_types["emit"])
        await runner.sweeper.sweep_record(read)  # the sweep goes on with what it read
        assert await runner.journal.last_status(request.job_id) is None
    finally:
        await eventstore.close(nc)


async def test_a_restarted_runner_leaves_alone_the_lease_another_runner_took_for_its_job(
    settings: Settings,
) -> None:
    """A runner starting on the host of a dead one still sees, on its board, the dead runner's
    lease of job J; meanwhile that lease expired and a live runner elsewhere took J's slot. The
    clean-up deletes only the dead runner's own lease (it deleted whatever lease J had, and
    ended J while the live runner ran it)."""
    from jobrunner.common.slots import slot_key
    from jobrunner.services.runner.service import Runner

    nc = await eventstore.connect(settings, "test-runner")
    try:
        runner = Runner(settings, nc)
        await eventstore.ensure_topology(runner.js, runner.names, settings)
        dead = await dead_runner_beside(runner.identity)
        alive = RunnerIdentity("elsewhere", "another-host", "another-boot", 4242, 99)
        key = slot_key(None, "taken-again")
        taken = await runner.slots.try_acquire(key, alive.held_value("taken-again", "emit"))
        assert taken is not None
        runner.board.slots[key] = dead.held_value("taken-again", "emit")  # not yet updated
        await runner.sweeper.clean_up_after_crash()
        now = await runner.slots.current(key)
        assert now is not None
        assert same_holder(now.value, taken.value)
        assert await runner.journal.last_status("taken-again") is None
    finally:
        await eventstore.close(nc)


async def test_a_reject_locks_claim_given_back_is_the_apis_reservation_again(
    settings: Settings,
) -> None:
    """The claim of a job on a ``reject`` lock turned the API's reservation into its lease;
    given back, the slot is that job's reservation again: another job's POST is still refused
    while the first is pending, and the first takes the slot when its request comes back."""
    from jobrunner.common.slots import slot_key
    from jobrunner.contracts import events
    from jobrunner.services.runner.service import Runner

    nc = await eventstore.connect(settings, "test-runner")
    try:
        runner = Runner(settings, nc)
        await eventstore.ensure_topology(runner.js, runner.names, settings)
        api = SlotTable(runner.js, runner.names, settings.lease_ttl_seconds)
        request = events.JobRequested(job_id="reserved-1", job_type="rejecting", lock="single")
        key = slot_key(request.lock, request.job_id)

        def reservation(job_id: str) -> SlotValue:
            return SlotValue(job_id=job_id, phase="reserved", job_type="rejecting")

        assert await api.try_acquire(key, reservation(request.job_id)) is not None
        held_value = runner.identity.held_value(request.job_id, request.job_type)
        assert await runner.slots.try_acquire(key, held_value) is not None  # the claim
        await runner.requests.claimer.give_back(request, runner.job_types["rejecting"])
        current = await runner.slots.current(key)
        assert current is not None
        assert current.value == reservation(request.job_id)
        assert await api.try_acquire(key, reservation("reserved-2")) is None
        again = await runner.slots.try_acquire(key, held_value)  # the request delivered again
        assert again is not None
        assert again.value.phase == "held"
    finally:
        await eventstore.close(nc)


async def test_a_queued_job_whose_start_met_a_nats_pause_keeps_its_place_in_the_queue(
    settings: Settings, own_nats: EmbeddedNats, tmp_path: Path
) -> None:
    """The head of a lock's queue holds the slot when NATS pauses (past nats-py's request
    timeout) before the job starts: the slot is given back, and the jobs still start strictly
    in queue order, the first one first, none ended RUNNER_LOST."""
    import threading

    from jobrunner.contracts import events
    from jobrunner.contracts.events import JobStatus
    from jobrunner.services.runner.service import Runner

    settings = msgspec.structs.replace(
        settings, nats_url=own_nats.url, state_dir=str(tmp_path / "state")
    )
    nc = await eventstore.connect(settings, "test-runner")
    api_nc = await eventstore.connect(settings, "test-api")
    stop = asyncio.Event()
    running: asyncio.Task[None] | None = None
    try:
        runner = Runner(settings, nc)
        names = runner.names
        await eventstore.ensure_topology(api_nc.jetstream(), names, settings)
        ids = [f"J{n}-queued" for n in (1, 2, 3)]
        order, lockfile = tmp_path / "order", tmp_path / "lock"
        read_status = runner.journal.newest
        paused: list[bool] = []

        async def pause_once_the_head_holds_the_slot(job_id: str, kind: str) -> Any:
            # The check made once the slot is held, before the job starts.
            if job_id == ids[0] and kind == "status" and not paused:
                lease = await runner.slots.current("slot.sheet")
                if lease is not None and lease.value.job_id == ids[0]:
                    paused.append(True)
                    pause(own_nats)
                    threading.Timer(6.0, resume, (own_nats,)).start()
            return await read_status(job_id, kind)

        runner.journal.newest = pause_once_the_head_holds_the_slot  # type: ignore[method-assign]
        running = asyncio.create_task(runner.run(stop))
        api = SlotTable(api_nc.jetstream(), names, settings.lease_ttl_seconds)
        for n, job_id in enumerate(ids, start=1):  # as the API does: queued, then requested
            await api.enqueue("sheet", job_id, "queued")
            await eventstore.publish(
                api_nc.jetstream(),
                names,
                events.JobRequested(
                    job_id=job_id,
                    job_type="queued",
                    lock="sheet",
                    parameters={
                        "lockfile": str(lockfile),
                        "order_file": str(order),
                        "label": f"J{n}",
                        "seconds": "1.0",
                    },
                ),
            )
        async with asyncio.timeout(120):
            while not (order.exists() and len(order.read_text().split()) == 3):  # noqa: ASYNC110 - the tools write it
                await asyncio.sleep(0.2)
        assert paused
        assert order.read_text().split() == ["J1", "J2", "J3"]
        for job_id in ids:
            async with asyncio.timeout(30):
                while not await ended(runner, job_id):  # noqa: ASYNC110 - read from the stream
                    await asyncio.sleep(0.2)
            status = await runner.journal.last_status(job_id)
            assert status is not None
            assert status.status == JobStatus.COMPLETED, status
    finally:
        resume(own_nats)
        stop.set()
        if running is not None:
            async with asyncio.timeout(30):
                await running
        await eventstore.close(api_nc)
        await eventstore.close(nc)


async def ended(runner: Any, job_id: str) -> bool:
    from jobrunner.contracts.events import JobStatus

    status = await runner.journal.last_status(job_id)
    return status is not None and status.status not in (JobStatus.PENDING, JobStatus.RUNNING)


async def test_a_lease_that_cannot_be_read_holds_its_slot(settings: Settings) -> None:
    """A value under a slot key that does not decode (written by hand, or corrupt) counts as
    held by someone unknown: nobody takes the slot over it (a second holder, should it be a live
    one's lease), renews or releases it; deleted, the slot is free again. Reading it used to
    raise, failing the claim or the API's request."""
    async with slot_table(settings) as slots:
        kv = await slots.kv()
        mine = await slots.try_acquire("slot.unreadable", held("first"))
        assert mine is not None
        await kv.put("slot.unreadable", b"not a lease")
        assert await slots.try_acquire("slot.unreadable", held("second")) is None
        assert await slots.try_acquire("slot.unreadable", held("second"), fresh=True) is None
        current = await slots.current("slot.unreadable")
        assert current is not None
        assert current.value == UNKNOWN_HOLDER
        assert await slots.renew(mine) is None  # the fence: the lease is not ours any more
        assert not await slots.release(mine)
        await slots.drop_reservation("slot.unreadable", "first")
        assert await slots.current("slot.unreadable") == current
        await kv.delete("slot.unreadable")
        assert await slots.try_acquire("slot.unreadable", held("second")) is not None


async def test_a_run_record_that_cannot_be_read_is_left_alone(settings: Settings) -> None:
    """A run record that does not decode is no running job's: a sweep reads the others, and
    nothing removes it on a job's behalf."""
    async with slot_table(settings) as slots:
        kv = await slots.kv()
        await kv.put("run.garbled", b"\x00\x01")
        record = RunRecord(job_id="readable", slot_key="job.readable", runner_id="me")
        await slots.record_run(record)
        assert record in await slots.run_records()
        assert await slots.run_record("garbled") is None
        await slots.give_back("job.garbled", held("garbled"))
        assert (await kv.get("run.garbled")).value == b"\x00\x01"
