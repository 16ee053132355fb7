"""The cluster as an operator sets it up: every stream and bucket on all three nodes, and a job
runs end to end on it."""

from __future__ import annotations

from jobrunner.contracts.names import Names
from tests.cluster import PREFIX, REPLICAS, NodeCluster
from tests.faults.cluster import is_terminal


async def test_event_stream_and_buckets_have_three_replicas(node_cluster: NodeCluster) -> None:
    """With stream_replicas = 3 the event stream and every bucket live on all three nodes."""
    names = Names(PREFIX)
    streams = [
        names.stream,
        f"KV_{names.locks_bucket}",
        f"KV_{names.tokens_bucket}",
        f"KV_{names.runners_bucket}",
        f"KV_{names.idempotency_bucket}",
        f"OBJ_{names.artifacts_bucket}",
    ]
    async with node_cluster.nats_client() as nc:
        js = nc.jetstream()
        replicas = {name: (await js.stream_info(name)).config.num_replicas for name in streams}
    assert replicas == dict.fromkeys(streams, REPLICAS)


async def test_a_job_runs_on_the_cluster_and_both_apis_serve_it(
    node_cluster: NodeCluster,
) -> None:
    """A job submitted to one API instance completes; the other instance shows it too."""
    job = await node_cluster.submit(node_cluster.fresh_lock_type(), lines=20, interval=0.01)
    row = await node_cluster.wait_job(job.id, is_terminal, 60)
    assert row is not None
    assert row.status == "completed", row
    assert await node_cluster.wait_stored(job.id, 20, 30) == 20
    async with node_cluster.client(api=1) as client:
        response = await client.get(f"/api/jobs/{job.id}")
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
