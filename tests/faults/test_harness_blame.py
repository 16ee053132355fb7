"""Which test a fault of the harness fails: a pytest session of its own, run here, whose tests
share one cluster (a package fixture, as tests/faults' ``short_ttl_cluster``) and whose
watchdog's restarts of a real service process fail before, between and during them. The fixture
under test is tests/faults' own autouse one (imported into the session's conftest)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = '''
from collections.abc import AsyncIterator

import pytest

from jobrunner.embedded.scratch import scratch_dir
from tests.faults.cluster import SHORT_TTL, FaultCluster, in_thread
from tests.faults.conftest import harness_faults_fail_their_test  # noqa: F401 - under test


@pytest.fixture(scope="package")
async def shared() -> AsyncIterator[FaultCluster]:
    """NATS, Postgres and a projector, which the watchdog restarts when it exits."""
    with scratch_dir("jobrunner-test-blame-") as root:
        cluster = FaultCluster(root, SHORT_TTL)
        try:
            await in_thread(cluster.nats.start)
            await in_thread(cluster.postgres.start)
            cluster.add_service("projector", "projector").spawn()
            cluster.keep_running()
            yield cluster
        finally:
            await cluster.stop()
'''

TESTS = '''
import asyncio

import pytest

from tests.faults.cluster import FaultCluster

FAILED = "the watchdog's restart of projector failed"


def cannot_restart(cluster: FaultCluster) -> None:
    """The projector's log in a missing folder (each restart fails to open it), and a crash."""
    projector = cluster.services["projector"]
    projector.log_file = cluster.root / "no-such-folder" / "projector.log"
    if projector.alive:
        projector.proc.kill()
        projector.proc.wait()
    projector.wanted = True


async def until_a_restart_failed(caplog: pytest.LogCaptureFixture) -> None:
    """Until the watchdog's restart of the projector failed during this test."""
    async with asyncio.timeout(60):
        while not any(r.getMessage() == FAILED for r in caplog.records):
            await asyncio.sleep(0.05)


def test_a_leaves_the_projector_unable_to_restart(shared: FaultCluster) -> None:
    cannot_restart(shared)  # a test, not async: its restart is tried once the next test runs


async def test_b_runs_while_the_restart_left_to_it_fails(
    shared: FaultCluster, caplog: pytest.LogCaptureFixture
) -> None:
    await until_a_restart_failed(caplog)


async def test_c_runs_without_the_cluster_while_it_fails(caplog: pytest.LogCaptureFixture) -> None:
    await until_a_restart_failed(caplog)


async def test_d_makes_a_restart_fail_itself(
    shared: FaultCluster, caplog: pytest.LogCaptureFixture
) -> None:
    projector = shared.services["projector"]
    projector.log_file = shared.root / "projector.log"
    down = projector.proc
    async with asyncio.timeout(60):
        while projector.proc is down:  # until the watchdog started it again
            await asyncio.sleep(0.05)
    caplog.clear()
    cannot_restart(shared)
    await until_a_restart_failed(caplog)
    projector.wanted = False


async def test_e_comes_last(shared: FaultCluster) -> None:
    pass
'''


def test_a_harness_fault_fails_only_the_test_it_happened_during_and_left_overs_the_stop(
    tmp_path: Path,
) -> None:
    """A test leaves a service that cannot be restarted: the next test of the shared cluster,
    during which the restart fails, passes, and so does one not using the cluster; a test that
    makes a restart fail itself fails at its end with its own failure alone; what no test of
    the cluster is to blame for is told at the cluster's stop, once, counted and said to be left
    over."""
    suite = tmp_path / "blamed"
    suite.mkdir()
    (suite / "__init__.py").write_text("")
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_shared.py").write_text(TESTS)
    ini = tmp_path / "pytest.ini"
    ini.write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = session\n"
        "asyncio_default_test_loop_scope = session\n"
    )
    report = tmp_path / "report.xml"
    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly"),
            *("-c", str(ini), "--rootdir", str(tmp_path), f"--junit-xml={report}", str(suite)),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    said = run.stdout + run.stderr
    errors = _errors_by_test(report)
    assert set(errors) == {"test_d_makes_a_restart_fail_itself", "test_e_comes_last"}, said
    raised, _ = errors["test_d_makes_a_restart_fail_itself"]
    assert raised.startswith(  # its own failure alone, nothing left over
        "failed on teardown with \"tests.faults.harness_faults.RestartFailed: the watchdog's "
        "restart of projector failed"
    ), raised
    assert "FileNotFoundError(" in raised, raised
    raised, told = errors["test_e_comes_last"]
    assert re.match(
        r'failed on teardown with "tests.faults.harness_faults.RestartFailed: the watchdog\'s '
        r"restart of projector failed \d+ times: FileNotFoundError\(",
        raised,
    ), raised
    assert re.search(
        r"left over: projector was down already when \S+::"
        r"test_b_runs_while_the_restart_left_to_it_fails began",
        told,
    ), told


def _errors_by_test(report: Path) -> dict[str, tuple[str, str]]:
    """The tests with an error (a setup's or a teardown's) or a failure: what pytest says was
    raised, and all it wrote."""
    found: dict[str, tuple[str, str]] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        for problem in [*case.iter("error"), *case.iter("failure")]:
            found[case.get("name", "")] = (problem.get("message", ""), problem.text or "")
    return found
