"""Metrics never hang on a server that is away: with NATS frozen (SIGSTOP), the API's /metrics
and a projector's own listener still answer, from values the services hold in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobrunner.embedded.serverprocess import free_port
from tests.faults.cluster import FaultCluster

# Well above a scrape's own work, well below what "hangs" means to Prometheus (10 s by default).
SCRAPE_TIMEOUT = 5.0


@pytest.fixture
def cluster(short_ttl_cluster: FaultCluster) -> FaultCluster:
    return short_ttl_cluster


@pytest.fixture
async def projector_with_listener(cluster: FaultCluster) -> AsyncIterator[str]:
    """A second projector (it waits on the checkpoint lock) with a metrics listener."""
    port = free_port()
    cluster.add_service("metrics-projector", "projector", metrics_address=f"127.0.0.1:{port}")
    await cluster.start_service("metrics-projector")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(cluster.services.pop("metrics-projector").stop)


def names_in(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


async def test_metrics_answer_while_nats_is_paused(
    cluster: FaultCluster, projector_with_listener: str
) -> None:
    """NATS frozen: GET /metrics of the API and a projector's own listener both still answer."""
    cluster.pause_nats()
    try:
        async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT) as client:
            api = await client.get(f"{cluster.base_url}/metrics")
            projector = await client.get(f"{projector_with_listener}/metrics")
    finally:
        cluster.resume_nats()
    assert api.status_code == 200, api.text
    assert "jobrunner_http_request_duration_seconds" in names_in(api.text)
    assert projector.status_code == 200
    assert "jobrunner_projector_lag_events" in names_in(projector.text)
