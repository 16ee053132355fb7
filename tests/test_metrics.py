"""GET /metrics against a real jobrunner: values move as jobs run, access is enforced, and the
services named as peers show up under their own name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import msgspec
import pytest

from jobrunner.common.metricsexposition import MetricsListener
from jobrunner.common.settings import Settings
from jobrunner.embedded.serverprocess import free_port
from tests.metrics_support import Samples, scrape, value
from tests.system import System
from tests.tools.job_type_files import TEST_TYPES
from tests.ui_support import TERMINAL, start_job, wait_for_status


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, job_types_file=TEST_TYPES, auth=True)


async def run_job(system: System, **parameters: object) -> str:
    """An ``emit`` job, started and waited for until it ended."""
    job_id = await start_job(system, "emit", **parameters)
    await wait_for_status(system, job_id, TERMINAL)
    return job_id


async def scrape_until(
    client: httpx.AsyncClient, condition: Callable[[Samples], bool], timeout: float = 20
) -> Samples:
    async with asyncio.timeout(timeout):
        while True:
            samples = await scrape(client)
            if condition(samples):
                return samples
            await asyncio.sleep(0.05)


async def test_metrics_count_a_job_its_lines_and_its_requests(system: System) -> None:
    """After a job runs, /metrics shows one more start and end of its type and its lines."""
    async with system.client() as client:
        before = await scrape(client)
        await run_job(system, lines=50)
        after = await scrape(client)
    api = {"service": "api"}
    started = "jobrunner_jobs_started_total"
    ended = "jobrunner_jobs_ended_total"
    lines = "jobrunner_lines_published_total"
    assert (
        value(after, started, job_type="emit", **api)
        == value(before, started, job_type="emit", **api) + 1
    )
    assert (
        value(after, ended, job_type="emit", status="completed", **api)
        == value(before, ended, job_type="emit", status="completed", **api) + 1
    )
    assert value(after, lines, **api) >= value(before, lines, **api) + 50
    # One series per route template, whatever job id was asked for.
    route = "/api/jobs/{job_id}"
    assert value(
        after,
        "jobrunner_http_request_duration_seconds_count",
        method="GET",
        route=route,
        status="200",
        **api,
    ) > value(
        before,
        "jobrunner_http_request_duration_seconds_count",
        method="GET",
        route=route,
        status="200",
        **api,
    )
    assert all(dict(labels).get("service") for _, labels in after)


async def test_requests_matching_no_route_count_under_one_label(system: System) -> None:
    """Requests for paths no route serves are timed under route="unmatched", one series for
    all of them, never one per path asked for."""
    count = "jobrunner_http_request_duration_seconds_count"
    unmatched = {"method": "GET", "route": "unmatched", "status": "404", "service": "api"}
    async with system.client() as client:
        before = value(await scrape(client), count, **unmatched)
        for path in ("/no/such/page", "/api/nothing-here", "/wp-login.php"):
            assert (await client.get(path)).status_code == 404
        after = await scrape(client)
    assert value(after, count, **unmatched) == before + 3
    routes = {dict(labels).get("route") for name, labels in after if name == count}
    assert not routes & {"/no/such/page", "/api/nothing-here", "/wp-login.php"}


async def test_metrics_count_sse_clients_while_they_follow(system: System) -> None:
    """A client following a job's stream counts in jobrunner_sse_clients until it leaves."""
    sse = "jobrunner_sse_clients"
    kind = {"kind": "job_event_stream", "service": "api"}
    async with system.client() as client:
        job_id = await run_job(system, lines=1)
        before = value(await scrape(client), sse, **kind)
        async with system.client() as follower:
            path = f"/api/jobs/{job_id}/stream"
            async with follower.stream("GET", path) as response:
                assert response.status_code == 200
                await scrape_until(client, lambda s: value(s, sse, **kind) == before + 1)
        await scrape_until(client, lambda s: value(s, sse, **kind) == before)


async def test_metrics_refuse_a_caller_without_a_token(system: System) -> None:
    """Without a token /metrics answers 401 with the usual JSON error."""
    async with system.client(token=None) as client:
        response = await client.get("/metrics")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"


async def test_metrics_refuse_a_token_limited_to_its_own_jobs(system: System) -> None:
    """A token that sees only its own jobs may not read everyone's counts: 403."""
    token = await system.create_token("own-viewer", "viewer", own_jobs_only=True)
    async with system.client(token=token) as client:
        response = await client.get("/metrics")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"


async def test_metrics_are_read_by_a_viewer(system: System) -> None:
    """A viewer token (read-only) is enough for a Prometheus scrape."""
    token = await system.create_token("prometheus", "viewer")
    async with system.client(token=token) as client:
        assert "jobrunner_jobs_started" in (await client.get("/metrics")).text


@pytest.fixture
async def peer() -> AsyncIterator[MetricsListener]:
    """A metrics listener as a runner process would have one (here: this test process)."""
    listener = MetricsListener("runner", f"127.0.0.1:{free_port()}")
    listener.start()
    yield listener
    listener.stop()


async def test_metrics_include_each_peer_under_its_service_name(
    settings: Settings, peer: MetricsListener, tmp_path: Path
) -> None:
    """The API's /metrics carries the peers' series, each labelled with the peer's name."""
    with_peer = msgspec.structs.replace(
        settings, metrics_peers=f"runner=http://127.0.0.1:{peer.port}"
    )
    system = System(with_peer)
    await system.start_api()
    try:
        async with system.client() as client:
            samples = await scrape(client)
    finally:
        await system.stop()
    assert value(samples, "jobrunner_metrics_peer_up", service="runner") == 1
    services = {
        dict(labels).get("service") for name, labels in samples if name.startswith("process_")
    }
    assert services == {"api", "runner"}


async def test_metrics_show_a_running_job_on_its_lock_and_count_its_cancel_once(
    system: System,
) -> None:
    """While a job holds its lock /metrics shows it running there; cancelled, it ends once."""
    running = "jobrunner_jobs_running"
    ended = "jobrunner_jobs_ended_total"
    labels = {"job_type": "exclusive", "status": "cancelled", "service": "api"}
    async with system.client() as client:
        before = await scrape(client)
        job_id = await start_job(system, "exclusive", lines=100000, interval="0.01")
        await wait_for_status(system, job_id, {"running"})
        await scrape_until(
            client, lambda s: value(s, running, lock="shared_sheet", service="api") == 1
        )
        assert (await client.delete(f"/api/jobs/{job_id}")).status_code < 300
        await wait_for_status(system, job_id, TERMINAL)
        after = await scrape_until(
            client, lambda s: value(s, running, lock="shared_sheet", service="api") == 0
        )
    assert value(after, ended, **labels) == value(before, ended, **labels) + 1
