"""Every service's start at once on a fresh 3-node cluster, the stream and every bucket with 3
replicas: a request about a replicated stream just created gets no answer until its replicas
have elected a leader, so each one the start sends must be sent again after the start's short
request timeout (``retry.START_REQUEST_TIMEOUT``), not after nats-py's 5 s. Then the node a start
talks to paused just shorter and just longer than that timeout: the start waits for it, or sends
again, and leaves everything configured either way.

Only the nodes run here (the services' start functions, ``tests/tools/service_starts.py``, run
in this process, as in ``tests/test_topology_races.py``): one cluster for the module."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats.aio.client
import pytest
import structlog

from jobrunner.common import eventstore, retry
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.serverprocess import free_port
from tests.cluster import NODE_NAMES, REPLICAS, ClusterNode
from tests.servers import delete_streams
from tests.tools.service_starts import STARTS, assert_configured, settings_for
from tests.tools.timed_out_requests import TimedOut

COPIES = 3  # of each service's start, spread over the nodes
ROUNDS = 3


@pytest.fixture(scope="module")
async def nodes(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[ClusterNode]]:
    root = tmp_path_factory.mktemp("cluster")
    route_ports = [free_port() for _ in NODE_NAMES]
    started = [
        ClusterNode(n, root, route_ports, p) for n, p in zip(NODE_NAMES, route_ports, strict=True)
    ]
    try:
        for node in started:
            await asyncio.to_thread(node.start)
        yield started
    finally:
        for node in started:
            node.resume()
            node.stop()


async def ready_settings(nodes: list[ClusterNode], tmp_path: Path) -> Settings:
    """A fresh deployment's settings, once the cluster answers JetStream requests."""
    settings = settings_for(
        nodes[0].url, f"t{uuid.uuid4().hex[:10]}", tmp_path, stream_replicas=REPLICAS
    )
    nc = await eventstore.connect(settings, "ready")
    try:
        await retry.until_jetstream_ready(nc.jetstream().account_info, "the cluster")
    finally:
        await eventstore.close(nc)
    return settings


async def test_starting_together_no_request_waits_the_default_timeout(
    nodes: list[ClusterNode], tmp_path: Path, timed_out: TimedOut
) -> None:
    """3 copies of every service's start at once, a fresh deployment each round: all succeed
    with the configuration asked for, and a request that got no answer was sent again after
    the start's timeout, none waited nats-py's 5 s (on main: 1-10 such requests a round, each
    round 5 or 10 s)."""
    await ready_settings(nodes, tmp_path)
    timed_out.clear()  # the wait for the cluster above is not a start's
    connections = [
        await eventstore.connect(Settings(nats_url=nodes[i % len(nodes)].url), "start")
        for i in range(COPIES * len(STARTS))
    ]
    try:
        for _ in range(ROUNDS):
            settings = settings_for(
                nodes[0].url, f"t{uuid.uuid4().hex[:10]}", tmp_path, stream_replicas=REPLICAS
            )
            results = await asyncio.gather(
                *(
                    STARTS[i % len(STARTS)](nc.jetstream(), nc, settings)
                    for i, nc in enumerate(connections)
                ),
                return_exceptions=True,
            )
            failed = [repr(r) for r in results if isinstance(r, BaseException)]
            assert not failed, failed
            await assert_configured(connections[0], settings)
            await delete_streams(nodes[0].url, settings.prefix)
    finally:
        await asyncio.gather(*(eventstore.close(nc) for nc in connections))
    waited_long = [(s, t) for s, t in timed_out if t >= retry.LONGEST_START_REQUEST_TIMEOUT]
    assert not waited_long, waited_long


@pytest.mark.parametrize(
    ("paused_for", "sent_again"),
    [(retry.START_REQUEST_TIMEOUT - 0.7, False), (retry.START_REQUEST_TIMEOUT + 0.5, True)],
    ids=["shorter", "longer"],
)
async def test_a_node_paused_during_the_start(
    nodes: list[ClusterNode], tmp_path: Path, paused_for: float, sent_again: bool
) -> None:
    """The node a start's connection is on paused just as the start declares a deployment
    that exists already (every other request answered at once): paused for less than the
    start's request timeout, its request is answered when it resumes and is not sent again;
    for longer, the start sends it again and succeeds. Either way it all stays configured."""
    settings = await ready_settings(nodes, tmp_path)
    names = Names(settings.prefix)
    node = nodes[1]
    nc = await eventstore.connect(Settings(nats_url=node.url), "start")
    try:
        await eventstore.ensure_topology(nc.jetstream(), names, settings)
        # Every stream's replicas have a leader now: a request goes unanswered only while the
        # node is paused.
        await asyncio.sleep(0.5)
        await eventstore.ensure_topology(nc.jetstream(), names, settings)

        async def paused_a_while() -> None:
            node.pause()
            try:
                await asyncio.sleep(paused_for)
            finally:
                node.resume()

        with structlog.testing.capture_logs() as logs:
            pausing = asyncio.create_task(paused_a_while())
            await asyncio.sleep(0.05)  # paused before the first request goes
            await eventstore.ensure_topology(nc.jetstream(), names, settings)
            await pausing
        waits = [e for e in logs if e["event"] == "waiting for JetStream"]
        assert bool(waits) == sent_again, waits
        await assert_topology(nc, settings)
    finally:
        node.resume()
        await eventstore.close(nc)
        await delete_streams(nodes[0].url, settings.prefix)


async def assert_topology(nc: nats.aio.client.Client, settings: Settings) -> None:
    """The streams ``ensure_topology`` declares, with the settings' limits."""
    names = Names(settings.prefix)
    js = nc.jetstream()
    stream = (await js.stream_info(names.stream)).config
    assert stream.max_consumers == settings.stream_max_consumers
    assert stream.num_replicas == REPLICAS
    for bucket in (names.locks_bucket, names.runners_bucket, names.idempotency_bucket):
        assert (await js.stream_info(f"KV_{bucket}")).config.num_replicas == REPLICAS
