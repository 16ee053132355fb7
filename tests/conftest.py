from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from jobrunner.common import eventstore
from jobrunner.common.settings import Settings
from jobrunner.contracts.names import Names
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import scratch_dir, sweep_stale
from tests import servers
from tests.freeze import thaw
from tests.servers import PostgresCluster, delete_streams, nats_url, postgres_cluster
from tests.system import System
from tests.tools.timed_out_requests import TimedOut, record_timed_out_requests

TOOLS = Path(__file__).parent / "tools"

# A service run inside the test process (an xdist worker) whose NATS connection is closed for
# good logs it and stays (its next NATS call raises) rather than ending the worker with 75; the
# services started as processes (`python -m jobrunner.cli ...`) still exit 75.
eventstore.closed_for_good_action = eventstore.log_closed_for_good
# The headless Chromium fixtures (``browser``, ``page``) of the web UI tests; the tables of
# figures of the fault and cluster suites, collected from every worker in a parallel run.
pytest_plugins = [
    "tests.browser",
    "tests.faults.figures",
    "tests.multinode.figures",
    "tests.reruns",
]


# The scratch directories of the servers tests start (tests/servers.py, tests/faults/cluster.py).
SCRATCH_PREFIX = "jobrunner-test-"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a parallel run (``./scripts/test``: pytest-xdist, ``--dist loadgroup``) the tests of a
    module that share a fixture wider than one test (a fault cluster, servers of their own) go
    to one worker together: spread out, each worker would start that fixture again."""
    if not config.getoption("loadgroup", default=False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue  # grouped already (tests/multinode: one group for the whole cluster suite)
        if group := shared_fixture_group(item):
            item.add_marker(pytest.mark.xdist_group(group))


def shared_fixture_group(item: pytest.Item) -> str | None:
    """The worker group of a test: the package of a package-wide fixture it uses (one cluster
    for the whole package, as in a serial run), else its module when it uses a module- or
    class-wide one, else none (any worker)."""
    info = getattr(item, "_fixtureinfo", None)
    defs = [d for group in info.name2fixturedefs.values() for d in group] if info else []
    packages = sorted(d.baseid for d in defs if d.scope == "package")
    if packages:
        return packages[0]
    if any(d.scope in ("class", "module") for d in defs):
        return str(item.module.__name__) if hasattr(item, "module") else item.nodeid
    return None


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller of a parallel run, once its workers are gone, stops what a worker that
    died left behind (its servers, a fault cluster's services) and removes their directories."""
    if config.pluginmanager.hasplugin("dsession"):
        sweep_stale(SCRATCH_PREFIX)


@pytest.fixture(scope="session")
def nats_server_url() -> Iterator[str]:
    with nats_url() as url:
        yield url


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def compiled_locales() -> Iterator[Path]:
    """Where the locales a test's Postgres speaks are compiled, once per run
    (tests/tools/translated_postgres.py: about 1 s each)."""
    with scratch_dir(f"{SCRATCH_PREFIX}locales-") as directory:
        yield directory


@pytest.fixture
async def settings(
    nats_server_url: str, pg_cluster: PostgresCluster, tmp_path: Path
) -> AsyncIterator[Settings]:
    """Settings isolated for one test: its own subject prefix and database, removed after."""
    isolated = Settings(
        nats_url=nats_server_url,
        database_url=await pg_cluster.fresh_database(),
        prefix=f"t{uuid.uuid4().hex[:10]}",
        state_dir=str(tmp_path / "state"),
        demo_pace=0.0,
        lease_ttl_seconds=3.0,
        log_format="console",
    )
    yield isolated
    await pg_cluster.drop_database(isolated.database_url)
    await delete_streams(nats_server_url, isolated.prefix)


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """JetStream of the test's own prefix, its stream created."""
    nc = await eventstore.connect(settings, "test")
    js = nc.jetstream()
    await eventstore.ensure_topology(js, Names(settings.prefix), settings)
    yield js
    await eventstore.close(nc)


@pytest.fixture
async def system(settings: Settings) -> AsyncIterator[System]:
    running = System(settings)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def projector_and_api(settings: Settings) -> AsyncIterator[System]:
    """Projector and API, no runner: a job the test publishes keeps the status it gives; yielded
    once /health answers."""
    async with System(settings) as running:
        await running.start_projector()
        await running.start_api()
        await running.wait_healthy()
        yield running


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory for a `jobrunner up` of a test's own (``tests/tools/up_process.Up``).
    Not under pytest's tmp_path: when we are root, Postgres runs as the 'postgres' user, who
    must be able to reach its data directory."""
    with scratch_dir("jobrunner-test-up-") as path:
        yield path


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own: pausing it disturbs no other test."""
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        assert server.proc is not None
        thaw(server.proc.pid)
        server.stop()


@pytest.fixture
def timed_out(monkeypatch: pytest.MonkeyPatch) -> TimedOut:
    """Records the requests that timed out; each is still sent to the real server as is."""
    return record_timed_out_requests(monkeypatch)


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A Postgres of this test's own: the test stops, freezes or kills it, so it must not be the
    shared one."""
    async with servers.own_postgres(f"{SCRATCH_PREFIX}own-pg-") as server:
        yield server
