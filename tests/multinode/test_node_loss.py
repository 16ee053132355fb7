"""Nodes of the JetStream cluster lost while jobs run and SSE clients watch: the stream's leader
SIGKILLed (and brought back), a follower SIGKILLed, all three restarted one after another. Each
time every line printed is stored once and reaches every client once, the jobs complete, and
the lock never has two holders. The lease TTL is the user's default (15 s)."""

from __future__ import annotations

import asyncio
import time

from jobrunner.contracts.names import Names
from jobrunner.services.runner.lease import renewal_interval
from tests.cluster import PREFIX, Election, NodeCluster
from tests.faults.renewals import next_renewal
from tests.multinode.nodeloss import node_loss_scenario


async def test_killing_the_stream_leader_mid_job_loses_no_line(node_cluster: NodeCluster) -> None:
    """The stream's leader node SIGKILLed mid-job, then started again: the job completes, every
    line stored and seen by every client once."""

    async def kill_leader() -> Election:
        leader = await node_cluster.stream_leader()
        assert leader is not None
        struck = time.monotonic()
        await node_cluster.kill_node(leader)
        election = await node_cluster.wait_stream_leader(struck, not_on=leader)
        await node_cluster.restart_node(leader)
        return election

    await node_loss_scenario(node_cluster, "stream leader SIGKILLed, restarted", kill_leader, 10)
    await node_cluster.wait_caught_up()


async def test_killing_a_follower_node_mid_job_loses_no_line(node_cluster: NodeCluster) -> None:
    """A node that does not lead the stream SIGKILLed mid-job, then started again: the job
    completes, every line stored and seen by every client once."""

    async def kill_follower() -> None:
        leader = await node_cluster.stream_leader()
        follower = next(n.name for n in node_cluster.nodes if n.name != leader)
        await node_cluster.kill_node(follower)
        await node_cluster.restart_node(follower)

    await node_loss_scenario(node_cluster, "a follower SIGKILLed, restarted", kill_follower, 5)
    await node_cluster.wait_caught_up()


async def test_restarting_every_node_in_turn_loses_no_line(node_cluster: NodeCluster) -> None:
    """All three nodes restarted one after another (each back and caught up before the next):
    the job completes, every line stored and seen by every client once."""

    async def rolling_restart() -> Election | None:
        longest: Election | None = None
        for node in node_cluster.nodes:
            leader = await node_cluster.stream_leader()
            struck = time.monotonic()
            await node_cluster.stop_node(node.name)
            if node.name == leader:
                election = await node_cluster.wait_stream_leader(struck, not_on=leader)
                if longest is None or election.seconds > longest.seconds:
                    longest = election
            await node_cluster.restart_node(node.name)
            await node_cluster.wait_caught_up()
        return longest

    await node_loss_scenario(node_cluster, "all three restarted in turn", rolling_restart, 20)


async def test_killing_the_leader_of_stream_and_locks_before_a_renewal_loses_no_line(
    node_cluster: NodeCluster,
) -> None:
    """The node leading both the event stream and the lock bucket SIGKILLed just before the
    running job's lease is due for renewal (the longest the lease can go unconfirmed): the job
    completes, or, when the lock bucket's election outlasts what is left of the lease (three
    quarters of the TTL less the renewal interval: 8.75 s with the default 15 s), ends
    LEASE_LOST; either way every line printed is stored and seen once, and the queued job
    never runs beside it."""
    names = Names(PREFIX)
    locks = f"KV_{names.locks_bucket}"
    leader = await node_cluster.stream_leader()
    assert leader is not None
    await node_cluster.move_leader(locks, leader)

    async def kill_before_renewal() -> Election:
        async with node_cluster.nats_client() as nc:
            renewed = await next_renewal(nc, names)
        # Strike a little before the next renewal is due.
        due = renewed + renewal_interval(node_cluster.lease_ttl) - 0.5
        await asyncio.sleep(max(0.0, due - time.monotonic()))  # the moment is the fault
        struck = time.monotonic()
        await node_cluster.kill_node(leader)
        election = await node_cluster.wait_stream_leader(struck, not_on=leader)
        locks_election = await node_cluster.wait_stream_leader(struck, leader, stream=locks)
        await node_cluster.restart_node(leader)
        return max(election, locks_election, key=lambda e: e.seconds)

    await node_loss_scenario(
        node_cluster,
        "leader of stream and lock bucket SIGKILLed just before a renewal, restarted",
        kill_before_renewal,
        12,
        may_lose_lease=True,
    )
    await node_cluster.wait_caught_up()
