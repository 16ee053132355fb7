"""Services told of one node only (``JOBRUNNER_NATS_URL`` names n1), and n1 SIGKILLed mid-job:
nats-py and the projector's own stream reader reconnect to the nodes the cluster announced
(INFO ``connect_urls``), so the job completes and every line is stored and seen once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from tests.cluster import Election, NodeCluster, running_node_cluster
from tests.multinode.nodeloss import node_loss_scenario


@pytest.fixture(scope="module")
async def one_named() -> AsyncIterator[NodeCluster]:
    async with running_node_cluster(named_nodes=1) as running:
        yield running


async def test_services_follow_the_cluster_when_their_only_named_node_dies(
    one_named: NodeCluster,
) -> None:
    """The one node the services were configured with SIGKILLed for good: they carry on with
    the other two; the job completes, every line stored and seen by every client once."""
    named = one_named.nodes[0].name

    async def kill_named() -> Election | None:
        leader = await one_named.stream_leader()
        struck = time.monotonic()
        await one_named.kill_node(named)
        if leader != named:
            return None
        return await one_named.wait_stream_leader(struck, not_on=named)

    await node_loss_scenario(one_named, f"the only named node ({named}) SIGKILLed", kill_named, 10)
    assert one_named.services["projector"].crashes == 0
