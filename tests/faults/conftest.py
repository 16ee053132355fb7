"""The fault-injection suite: real services as ``jobrunner up`` runs them, on servers of their own,
hurt while jobs run. The figures of a run are printed as a table at its end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from jobrunner.embedded.scratch import scratch_dir
from tests.faults import figures
from tests.faults.cluster import FaultCluster

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            # A fault test measures one run of a fault: a rerun would hide a broken invariant
            # that shows only sometimes, and double the suite's time when one is broken.
            item.add_marker(pytest.mark.flaky(reruns=0))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not figures.FIGURES:
        return
    terminalreporter.section("faults: what each fault did to its job")
    for row in figures.table():
        terminalreporter.write_line(row)


@asynccontextmanager
async def running_cluster(lease_ttl: float, runners: int = 2) -> AsyncIterator[FaultCluster]:
    # Not under pytest's tmp_path: when we are root, Postgres runs as the 'postgres' user, who
    # must be able to reach its data directory.
    with scratch_dir("jobrunner-test-faults-") as root:
        cluster = FaultCluster(root, lease_ttl, runners)
        try:
            await cluster.start()
            yield cluster
        finally:
            await cluster.stop()
