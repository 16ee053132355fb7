"""`jobrunner token create` on a cluster before any API instance has started: the operator's
first step in compose.cluster.yaml's recipe."""

from __future__ import annotations

import uuid

from jobrunner.contracts.names import Names
from tests.cli_support import run_cli
from tests.cluster import REPLICAS, NodeCluster


async def test_first_token_of_a_cluster_is_kept_on_every_node(node_cluster: NodeCluster) -> None:
    """A token created from the command line before any API ran lives on all three nodes."""
    prefix = f"tok{uuid.uuid4().hex[:8]}"  # a bucket no API instance has made yet
    env = {
        "JOBRUNNER_NATS_URL": ",".join(node_cluster.all_urls),
        "JOBRUNNER_PREFIX": prefix,
        "JOBRUNNER_STREAM_REPLICAS": str(REPLICAS),
    }
    out, _ = await run_cli("token", "create", "first-admin", "--role", "admin", env=env)
    assert out.strip().startswith("jrt_")
    bucket = f"KV_{Names(prefix).tokens_bucket}"
    async with node_cluster.nats_client() as nc:
        js = nc.jetstream()
        try:
            assert (await js.stream_info(bucket)).config.num_replicas == REPLICAS
        finally:
            await js.delete_stream(bucket)
