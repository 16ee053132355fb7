"""The cluster suite: jobrunner on a 3-node JetStream cluster (``tests/cluster.py``), hurt while
jobs run. Every test here carries the ``cluster`` marker and runs in one xdist group, so one
worker builds the clusters; the figures of a run are printed as a table at its end
(tests/multinode/figures.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.cluster import NodeCluster, running_node_cluster
from tests.faults.cluster import cluster_faults_fail_their_test

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist registers its marker; without it (a plain run) --strict-markers must know it.
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): run in one xdist worker")


# Before tests/conftest.py's hook (which groups the other tests by module, and leaves these
# alone) and pytest-xdist's, which reads the groups: the cluster suite is one group, one worker.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.xdist_group("cluster"))
            # One run is one measurement: a rerun would hide a broken invariant that shows only
            # sometimes (as in tests/faults).
            item.add_marker(pytest.mark.flaky(reruns=0))


@pytest.fixture(scope="package")
async def node_cluster() -> AsyncIterator[NodeCluster]:
    """One cluster (3 nodes, 2 runners, 2 APIs, 1 projector; lease TTL 15 s as a user has it)
    for the tests that leave it whole: each takes a lock of its own."""
    async with running_node_cluster() as running:
        yield running


@pytest.fixture(autouse=True)
def harness_faults_fail_their_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test during which the harness of its own clusters went wrong fails at its end ("ERROR
    at teardown"), naming it; of a cluster shared with other tests, only what happened while it
    ran (tests/faults/cluster.py)."""
    yield from cluster_faults_fail_their_test(request)
