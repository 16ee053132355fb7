"""Start in any order: the three nodes and every service started at the same moment, before the
cluster has formed, or with one node down. Each service waits for JetStream (saying so in its
log) and comes up; none exits, and the stream and buckets are created once with 3 replicas."""

from __future__ import annotations

import asyncio

from tests.cluster import NodeCluster, running_node_cluster
from tests.faults.cluster import is_terminal


async def assert_everything_works(cluster: NodeCluster) -> None:
    exited = {name: s.crashes for name, s in cluster.services.items() if s.crashes or not s.alive}
    assert not exited, f"services exited at start: {exited}"
    job = await cluster.submit(cluster.fresh_lock_type(), lines=10, interval=0.01)
    row = await cluster.wait_job(job.id, is_terminal, 60)
    assert row is not None
    assert row.status == "completed", row
    for api in range(len(cluster.api_ports)):
        async with cluster.client(api=api) as client:
            response = await client.get(f"/api/jobs/{job.id}")
        assert response.status_code == 200, (api, response.text)


async def test_services_started_with_the_nodes_wait_for_the_cluster() -> None:
    """Nodes and services started at once: every service comes up, none exits, a job runs."""
    async with running_node_cluster(at_once=True) as cluster:
        await assert_everything_works(cluster)


async def test_services_started_with_a_node_down_wait_for_it() -> None:
    """Two nodes of three and every service started at once (the third down, so no stream of 3
    replicas can be made yet): each service logs that it waits for JetStream and stays up; once
    the third node starts, all come up and a job runs."""
    async with running_node_cluster(at_once=True, down=("n3",)) as cluster:
        async with asyncio.timeout(120):
            while not all(s.log_count("waiting for JetStream") for s in cluster.services.values()):
                exited = [name for name, s in cluster.services.items() if not s.alive]
                assert not exited, f"exited while waiting: {exited}"
                await asyncio.sleep(0.2)
        await cluster.restart_node("n3")
        await cluster.wait_ready()
        await assert_everything_works(cluster)


async def test_services_restarted_while_a_node_is_down_come_up() -> None:
    """A running installation restarted (every service) while one node is down: all come up on
    the two others and a job runs."""
    async with running_node_cluster() as cluster:
        await cluster.kill_node("n3")
        for service in cluster.services.values():
            await asyncio.to_thread(service.stop)
        for service in cluster.services.values():
            service.spawn()
        await cluster.wait_ready()
        await assert_everything_works(cluster)
