"""The fault-injection suite: real services as ``jobrunner up`` runs them, on servers of their own,
hurt while jobs run. The figures of a run are printed as a table at its end
(tests/faults/figures.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.faults.cluster import (
    SHORT_TTL,
    FaultCluster,
    cluster_faults_fail_their_test,
    running_cluster,
)

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            # A fault test measures one run of a fault: a rerun would hide a broken invariant
            # that shows only sometimes, and double the suite's time when one is broken.
            item.add_marker(pytest.mark.flaky(reruns=0))


@pytest.fixture(scope="package")
async def short_ttl_cluster() -> AsyncIterator[FaultCluster]:
    """One cluster with a 3 s lease TTL for every module whose faults leave it usable (each test
    takes a lock of its own, so one test's stuck job cannot hold up the next)."""
    async with running_cluster(lease_ttl=SHORT_TTL) as running:
        yield running


@pytest.fixture(autouse=True)
def harness_faults_fail_their_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test during which the harness of its own clusters went wrong fails at its end ("ERROR
    at teardown"), naming it; of a cluster shared with other tests, only what happened while it
    ran (tests/faults/cluster.py)."""
    yield from cluster_faults_fail_their_test(request)
