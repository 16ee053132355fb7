"""Which test a fault of the harness fails: a pytest session of its own, run here, whose tests
share one cluster (a package fixture, as tests/faults' ``short_ttl_cluster``) and whose
watchdog's restarts of a real service process fail before, between and during them. The fixture
under test is tests/faults' own autouse one (imported into the session's conftest). The fixture
itself has a restart fail while it sets the cluster up, and another program takes the API's port
between two tests (the move happens while a test not of the cluster runs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = '''
import asyncio
from collections.abc import AsyncIterator

import pytest

from jobrunner.embedded.scratch import scratch_dir
from tests.faults.cluster import SHORT_TTL, FaultCluster, in_thread
from tests.faults.conftest import harness_faults_fail_their_test  # noqa: F401 - under test


@pytest.fixture(scope="package")
async def shared() -> AsyncIterator[FaultCluster]:
    """NATS, Postgres, a projector and an API, which the watchdog restarts when they exit; a
    restart of the projector failed while this set it up (its log in a missing folder)."""
    with scratch_dir("jobrunner-test-blame-") as root:
        cluster = FaultCluster(root, SHORT_TTL)
        try:
            await in_thread(cluster.nats.start)
            await in_thread(cluster.postgres.start)
            projector = cluster.add_service("projector", "projector")
            cluster.add_service("api", "api")
            await cluster.start_service("projector")
            await cluster.start_service("api")
            projector.log_file = root / "no-such-folder" / "projector.log"
            projector.proc.kill()
            projector.proc.wait()
            cluster.keep_running()
            async with asyncio.timeout(60):
                while not cluster.harness_faults.failed_restarts("projector"):
                    await asyncio.sleep(0.05)
            projector.log_file = root / "projector.log"
            async with asyncio.timeout(60):
                while not projector.alive:
                    await asyncio.sleep(0.05)
            yield cluster
        finally:
            await cluster.stop()
'''

TESTS = '''
import asyncio
import contextlib

import pytest

from tests.faults.cluster import FaultCluster
from tests.tools.stranger_server import stranger_on

# The API's port taken by another program from one test to a later one.
TAKEN = contextlib.ExitStack()
CLUSTER: list[FaultCluster] = []

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


def test_c2_leaves_the_apis_port_to_another_program(shared: FaultCluster) -> None:
    api = shared.services["api"]
    api.kill()
    api.wanted = True  # a crash: a test, not async: its restart is tried once the next test runs
    TAKEN.enter_context(stranger_on(shared.port))
    CLUSTER.append(shared)


async def test_c3_runs_without_the_cluster_while_its_api_moves() -> None:
    [cluster] = CLUSTER
    taken = cluster.port
    async with asyncio.timeout(60):
        while cluster.port == taken or not cluster.services["api"].alive:
            await asyncio.sleep(0.05)
    TAKEN.close()


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
    """A restart failed while the fixture set the shared cluster up, and a test leaves a
    service that cannot be restarted: the next test of the shared cluster, during which the
    restart fails, passes, and so does one not using the cluster; a test leaves another program
    on the API's port, and the test not of the cluster during which the API moves passes; a
    test that makes a restart fail itself fails at its end with its own failure alone; what no
    test of the cluster is to blame for is told at the cluster's stop, each fault once, counted
    and said to be left over, and why."""
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
        # Not this session's PYTEST_* (its xdist worker, its current test): a session of its own.
        env={
            **{key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")},
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    said = run.stdout + run.stderr
    errors = _errors_by_test(report)
    assert set(errors) == {"test_d_makes_a_restart_fail_itself", "test_e_comes_last"}, said
    [(raised, _)] = errors["test_d_makes_a_restart_fail_itself"]
    assert raised.startswith(  # its own failure alone, nothing left over
        "failed on teardown with \"tests.faults.harness_faults.RestartFailed: the watchdog's "
        "restart of projector failed"
    ), raised
    assert "FileNotFoundError(" in raised, raised
    [(raised, told)] = errors["test_e_comes_last"]
    assert raised.startswith(
        'failed on teardown with "ExceptionGroup: the fault harness of this shared cluster went '
        "wrong outside its tests"
    ), raised
    assert re.search(
        r"RestartFailed: the watchdog's restart of projector failed( \d+ times)?: "
        r"FileNotFoundError\(",
        told,
    ), told
    assert "left over: it happened before this shared cluster's first test began" in told, told
    assert re.search(
        r"left over: projector was down already when \S+::"
        r"test_b_runs_while_the_restart_left_to_it_fails began",
        told,
    ), told
    assert re.search(r"NotOurApi: .*; the cluster moved api to port \d+", told, re.DOTALL), told
    assert "left over: it happened while none of this shared cluster's tests ran; the " in told


def _errors_by_test(report: Path) -> dict[str, list[tuple[str, str]]]:
    """The tests with errors (a setup's or a teardown's) or a failure: each, what pytest says
    was raised and all it wrote (a call's failure and its teardown's error both)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        for problem in [*case.iter("error"), *case.iter("failure")]:
            found.setdefault(case.get("name", ""), []).append(
                (problem.get("message", ""), problem.text or "")
            )
    return found
