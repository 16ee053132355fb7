"""Every service as a process (``python -m jobrunner.cli <service>``, as ``jobrunner up`` and a
compose file start them) started while Postgres is stopped: each stays up, none is restarted,
a job is started and run; once Postgres starts, the read models show the job and health is ok on
Postgres, with no service restarted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jobrunner.embedded.scratch import scratch_dir
from jobrunner.services.projector import outage
from tests.faults.cluster import SHORT_TTL, FaultCluster, in_thread, is_terminal

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
async def cluster_without_postgres() -> AsyncIterator[FaultCluster]:
    """NATS up; Postgres made (its data directory) and stopped."""
    with scratch_dir("jobrunner-test-faults-pgdown-") as root:
        cluster = FaultCluster(root, SHORT_TTL, runners=1)
        try:
            await in_thread(cluster.nats.start)
            await in_thread(cluster.postgres.start)
            await in_thread(cluster.postgres.stop)
            yield cluster
        finally:
            await cluster.stop()


async def until_in_log(cluster: FaultCluster, name: str, text: str) -> None:
    service = cluster.services[name]
    async with asyncio.timeout(60):
        while not service.log_count(text):
            assert service.alive, service.log_file.read_text()[-3000:]
            await asyncio.sleep(0.1)  # another process writes it: read it again


async def test_every_service_starts_while_postgres_is_stopped_and_goes_on_when_it_starts(
    cluster_without_postgres: FaultCluster,
) -> None:
    """Before the fix the API exited at start (its read pool's first connection refused) and
    the projector too, each restarted by the supervisor again and again."""
    cluster = cluster_without_postgres
    cluster.add_service("projector", "projector")
    cluster.add_runner("runner-1")
    cluster.add_service("notifier", "notifier")
    cluster.add_service("api", "api")
    cluster.services["projector"].spawn()
    await cluster.start_service("runner-1")
    await cluster.start_service("notifier")
    await cluster.start_service("api")
    await until_in_log(cluster, "projector", outage.WAITING_EVENT)
    async with cluster.client() as client:
        health = await client.get("/health")
        assert health.status_code == 503, health.text
        assert "POSTGRES_UNREACHABLE" in health.text, health.text
        listed = await client.get("/api/jobs")
        assert listed.status_code == 503, listed.text
        assert listed.json()["error"]["code"] == "READ_MODELS_UNAVAILABLE", listed.text
        posted = await client.post(
            "/api/jobs?wait=stored",
            json={
                "job_type": "free",
                "parameters": {
                    "lines": 3,
                    "record": str(cluster.records / "pgdown.txt"),
                    "label": "pgdown",
                },
            },
        )
        assert posted.status_code == 201, posted.text
    job_id = posted.json()["id"]
    await cluster.start_postgres()
    await until_in_log(cluster, "projector", "projector started")
    row = await cluster.wait_job(job_id, is_terminal, timeout=60)
    assert row is not None
    assert row.status == "completed", row
    async with cluster.client() as client, asyncio.timeout(60):
        while (await client.get(f"/api/jobs/{job_id}")).status_code != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # only HTTP tells
        health = (await client.get("/health")).json()
    assert health["postgres"] is True, health
    for name, service in cluster.services.items():
        assert service.alive, f"{name} exited:\n{service.log_file.read_text()[-3000:]}"
        assert service.proc is not None
    assert cluster.services["projector"].log_count(outage.WAITING_EVENT) == 1
