"""A runner's writes to the cluster's lock bucket (3 replicas): a claim whose writes the server
has yet to store when the give-back starts (their request timed out in a NATS pause) leaves
neither its lease nor its run record behind; renewals in flight at once keep their lease; a
release behind renewals abandoned in flight frees the slot."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.common.slots import SlotTable, same_holder, slot_key
from jobrunner.contracts.names import Names
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from jobrunner.services.runner.running import RunnerIdentity
from tests.cluster import NODE_NAMES, REPLICAS, ClusterNode

CLAIMS = 200


@pytest.fixture
async def nodes_only() -> AsyncIterator[list[ClusterNode]]:
    """The cluster's three NATS nodes alone (no services, no Postgres)."""
    with scratch_dir("jobrunner-test-giveback-") as root:
        route_ports = [free_port() for _ in NODE_NAMES]
        nodes = [
            ClusterNode(name, root / "nodes", route_ports, port)
            for name, port in zip(NODE_NAMES, route_ports, strict=True)
        ]
        try:
            await asyncio.gather(*(asyncio.to_thread(node.start) for node in nodes))
            yield nodes
        finally:
            await asyncio.gather(*(asyncio.to_thread(node.stop) for node in nodes))


@contextlib.asynccontextmanager
async def lock_bucket(nodes: list[ClusterNode], ttl: float) -> AsyncIterator[SlotTable]:
    """The lock bucket of a fresh prefix on the three nodes, once the cluster has formed."""
    settings = Settings(
        nats_url=",".join(node.url for node in nodes),
        prefix="lb" + uuid.uuid4().hex[:8],
        lease_ttl_seconds=ttl,
        stream_replicas=REPLICAS,
    )
    names = Names(settings.prefix)
    nc = await eventstore.connect(settings, "lock-bucket-test")
    try:
        js = nc.jetstream()
        async with asyncio.timeout(60):
            while True:  # until the cluster has formed and elected a meta leader
                try:
                    await eventstore.ensure_topology(js, names, settings)
                    break
                except Exception:
                    await asyncio.sleep(0.5)
        info = await js.stream_info(f"KV_{names.locks_bucket}")
        assert info.config.num_replicas == REPLICAS
        yield SlotTable(js, names, ttl)
    finally:
        await nc.close()


async def test_give_back_undoes_a_claim_still_in_flight_on_three_replicas(
    nodes_only: list[ClusterNode],
) -> None:
    """Each claim's lease and record are sent (not awaited), then given back at once: the
    give-back must wait until the bucket applied them, which on a replicated bucket only an
    accepted write's ack tells (a refused write is refused before the writes ahead of it are
    replicated), and then delete both."""
    async with lock_bucket(nodes_only, ttl=10.0) as slots:
        runner = RunnerIdentity(runner_id="r1", host="h", boot_id="b", pid=1, started_ticks=1)
        leases_left = records_left = 0
        for n in range(CLAIMS):
            job_id = f"j{n}-{uuid.uuid4().hex[:4]}"
            key = slot_key(None, job_id)
            held = runner.held_value(job_id, "t")
            claim = asyncio.ensure_future(
                slots.create_recorded(key, held, runner.run_record(job_id, key))
            )
            for _ in range(3):  # the claim's writes are in the connection's buffer
                await asyncio.sleep(0)
            await slots.give_back(key, held)
            await claim
            records_left += await slots.run_record(job_id) is not None
            leases_left += await slots.current(key) is not None
    assert (leases_left, records_left) == (0, 0)


async def test_renewals_in_flight_at_once_keep_the_lease_on_three_replicas(
    nodes_only: list[ClusterNode],
) -> None:
    """What a lease keeper has in flight after an outage: renewals naming one revision. A
    replicated bucket refuses one while an earlier write to the key is still being replicated,
    and the key then still reads as the revision it named: that is no reason to say the lease
    is lost (main said so in most rounds)."""
    async with lock_bucket(nodes_only, ttl=12.0) as slots:
        runner = RunnerIdentity(runner_id="r1", host="h", boot_id="b", pid=1, started_ticks=1)
        refused = 0
        for n in range(20):
            held = runner.held_value(f"j{n}", "t")
            lease = await slots.try_acquire(slot_key(None, f"j{n}"), held, fresh=True)
            assert lease is not None
            renewed = await asyncio.gather(*(slots.renew(lease) for _ in range(8)))
            refused += sum(each is None for each in renewed)
            current = await slots.current(lease.key)
            assert current is not None
            assert same_holder(current.value, held)
    assert refused == 0


async def test_a_release_behind_abandoned_renewals_frees_the_slot_on_three_replicas(
    nodes_only: list[ClusterNode],
) -> None:
    """What a keeper stopped in an outage leaves: renewals sent and abandoned (their tasks
    cancelled), and the release, naming the revision before them, right behind them. The bucket
    stores the first renewal and refuses the delete, on a replicated bucket at times while the
    renewal is still being replicated (the key then reads as the revision the delete named):
    the release must still delete our lease, at the revision it holds (main left every one of
    them held until it expired)."""
    async with lock_bucket(nodes_only, ttl=12.0) as slots:
        runner = RunnerIdentity(runner_id="r1", host="h", boot_id="b", pid=1, started_ticks=1)
        held_on = []
        for n in range(20):
            held = runner.held_value(f"j{n}", "t")
            lease = await slots.try_acquire(slot_key(None, f"j{n}"), held, fresh=True)
            assert lease is not None
            renewals = [asyncio.ensure_future(slots.renew(lease)) for _ in range(3)]
            for _ in range(3):  # the renewals' writes are in the connection's buffer
                await asyncio.sleep(0)
            for renewal in renewals:  # abandoned, as a stopped keeper's attempts are
                renewal.cancel()
            released = await slots.release(lease)
            await asyncio.gather(*renewals, return_exceptions=True)
            if not released or await slots.current(lease.key) is not None:
                held_on.append(lease.key)
    assert held_on == []
