"""The fault cluster starts (and restarts) its API on a port of its own, which another test's
server can take while the API is down (the workers of a CI run start servers on free ports all the
time). Its start must see that the answer on the port is not its API's, rather than send every
later request of the test to a stranger (session 34: 46 fault tests failed on with
``401 UNAUTHORIZED`` from another test's API); and the cluster must go on serving the tests after
it, on a port of its own."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from tests.faults.cluster import (
    SHORT_TTL,
    AlreadyRunning,
    FaultCluster,
    clusters_among,
    in_thread,
    raise_harness_faults,
)
from tests.faults.harness_faults import KEPT, HarnessFaults, HarnessFaultsNotKept, RestartFailed
from tests.system import System
from tests.tools.api_address import ApiAddress, NotOurApi
from tests.tools.stranger_server import stranger_on


@asynccontextmanager
async def api_only_cluster() -> AsyncIterator[FaultCluster]:
    """A fault cluster of NATS, Postgres and an API service (added, not started)."""
    with scratch_dir("jobrunner-test-faults-port-") as root:
        cluster = FaultCluster(root, SHORT_TTL)
        try:
            await in_thread(cluster.nats.start)
            await in_thread(cluster.postgres.start)
            cluster.add_service("api", "api")
            yield cluster
        finally:
            await cluster.stop()


async def test_starting_the_api_fails_naming_the_port_when_another_api_answers_there(
    settings: Settings,
) -> None:
    """Another test's API (with tokens) on the cluster's API port: the API's start fails with a
    sentence naming the port, what answered there and how our API fared, and the cluster's API
    answers on a port of its own afterwards."""
    async with (
        api_only_cluster() as cluster,
        System(msgspec.structs.replace(settings, auth=True)) as stranger,
    ):
        taken = cluster.port
        stranger.port = taken
        stranger.base_url = cluster.base_url
        await stranger.start_api()
        assert stranger.port == taken, "the port was taken before the stranger"
        with pytest.raises(NotOurApi) as failed:
            await cluster.start_service("api")
        assert cluster.port != taken
        assert await cluster.api_addresses["api"].answers()
    sentence = str(failed.value)
    assert f"port {taken} is not our API's: /health answered " in sentence, sentence
    assert '"instance":' in sentence, sentence  # what answered, in its own words
    assert "our api is " in sentence, sentence
    assert f"the cluster moved api to port {cluster.port}" in sentence, sentence


async def test_an_api_that_crashed_while_another_program_took_its_port_is_moved_and_told() -> None:
    """The API dies on its own and another program (answering 401) takes its port before the
    watchdog starts it again: the test's next request fails saying the port is not our API's,
    and the next ones reach our API again, on a port of its own."""
    async with api_only_cluster() as cluster:
        await cluster.start_service("api")
        cluster.keep_running()
        crashed = cluster.port
        api = cluster.services["api"].proc
        assert api is not None
        api.send_signal(signal.SIGKILL)  # a crash: the watchdog is to start it again
        api.wait()
        with stranger_on(crashed):
            with pytest.raises(NotOurApi) as told:
                await _ask_health_until_told(cluster)
            await cluster.wait_started("api")  # on the port the clients were pointed at
            async with cluster.client() as client:
                body = (await client.get("/health")).json()
    assert f"port {crashed} is not our API's: /health answered 401 " in str(told.value)
    assert cluster.port != crashed
    assert body["instance"] == cluster.api_addresses["api"].instance


async def _ask_health_until_told(cluster: FaultCluster, seconds: float = 60) -> None:
    """Ask the cluster's API for /health over and over, as a test's requests go on, until a
    client() raises; fails saying so when none has in ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        async with cluster.client() as client:
            await client.get("/health")
        await asyncio.sleep(0.1)
    pytest.fail(f"for {seconds:.0f} s no client() said that another program had the API's port")


async def test_an_address_answered_by_a_plain_web_server_is_not_our_api() -> None:
    """A web server answering 401 with an HTML page on our API's port: the probe fails with a
    sentence naming the port, the status and the page."""
    port = free_port()
    with stranger_on(port), pytest.raises(NotOurApi) as failed:
        await ApiAddress(port, "ours").answers()
    assert str(failed.value) == (
        f"port {port} is not our API's: /health answered 401 '<html>Unauthorized</html>', "
        "not instance 'ours'"
    )


async def test_an_address_nobody_listens_on_is_not_answering_yet() -> None:
    """Nothing on the port (our API still starting): the probe says no answer yet."""
    assert not await ApiAddress(free_port(), "ours").answers()


async def test_an_api_moved_off_a_taken_port_that_cannot_start_sends_no_client_to_it() -> None:
    """Another program on the API's port and NATS paused: the start moves the API to a free port
    and times out there. The test's next request fails saying the port was taken, and later
    ones go to our API's new port, never to the stranger."""
    async with api_only_cluster() as cluster:
        taken = cluster.port
        with stranger_on(taken):
            cluster.pause_nats()
            try:
                with pytest.raises(TimeoutError) as timed_out:
                    await cluster.start_service("api", timeout=5)
            finally:
                cluster.resume_nats()
            assert cluster.port != taken
            with pytest.raises(NotOurApi, match=f"port {taken} is not our API's"):
                cluster.client()
            await cluster.wait_started("api")
            async with cluster.client() as client:
                body = (await client.get("/health")).json()
    assert body["instance"] == cluster.api_addresses["api"].instance
    assert any(f"port {taken} is not our API's" in note for note in timed_out.value.__notes__)


async def test_starting_the_api_while_the_watchdog_restarts_it_leaves_one_api_running() -> None:
    """The API crashed and the watchdog's restart still waits (NATS paused) when the test
    starts the API itself: the test's start takes over, and the watchdog's process does not
    linger beside the test's."""
    async with api_only_cluster() as cluster:
        await cluster.start_service("api")
        cluster.keep_running()
        service = cluster.services["api"]
        crashed = service.proc
        assert crashed is not None
        cluster.pause_nats()
        try:
            crashed.send_signal(signal.SIGKILL)
            crashed.wait()
            async with asyncio.timeout(60):
                while True:  # until the watchdog has started it again
                    if service.proc is not crashed and service.alive:
                        break
                    await asyncio.sleep(0.05)
            restarted = service.proc
            assert restarted is not None
            starting = asyncio.create_task(cluster.start_service("api"))
            await asyncio.sleep(0)  # the test's start begins while NATS is still paused
        finally:
            cluster.resume_nats()
        await starting
        assert restarted.poll() is not None, "the watchdog's API still runs beside the test's"
        assert service.proc is not restarted
        assert await cluster.api_addresses["api"].answers()


async def test_starting_an_api_that_runs_already_is_an_error_and_leaves_it_running() -> None:
    """A test starts the API while its process still runs: the start fails naming the API and
    its pid, and that process goes on serving, alone (no second API spawned beside it)."""
    async with api_only_cluster() as cluster:
        await cluster.start_service("api")
        service = cluster.services["api"]
        running = service.proc
        assert running is not None
        with pytest.raises(AlreadyRunning, match=rf"api is running already \(pid {running.pid}\)"):
            await cluster.start_service("api")
        assert service.proc is running, "a second API was spawned beside the running one"
        assert running.poll() is None
        assert await cluster.api_addresses["api"].answers()


def _crashed(cluster: FaultCluster, name: str) -> subprocess.Popen[bytes]:
    """Service ``name`` SIGKILLed (a crash: the watchdog is to start it again); its process."""
    crashed = cluster.services[name].proc
    assert crashed is not None
    crashed.send_signal(signal.SIGKILL)
    crashed.wait()
    return crashed


async def _restart_failed_for_want_of_its_log(cluster: FaultCluster, name: str) -> list[Exception]:
    """Service ``name`` crashed with its log in a missing folder: until the watchdog's restart
    of it failed; then no more restarts of it (their failures would end the test too), and what
    the cluster hands over."""
    service = cluster.services[name]
    service.log_file = cluster.root / "no-such-folder" / f"{name}.log"
    _crashed(cluster, name)
    async with asyncio.timeout(60):
        while not cluster.harness_faults.failed_restarts(name):  # noqa: ASYNC110 - the watchdog's
            await asyncio.sleep(0.05)
    service.wanted = False
    return cluster.take_harness_faults()


async def test_a_watchdog_restart_that_fails_is_told_once_naming_the_restart() -> None:
    """The watchdog's restart of a crashed API fails by a fault of the harness (its log cannot
    be opened): the cluster hands it over once, naming the restart and its cause, for the
    faults conftest to fail the test it happened in."""
    async with api_only_cluster() as cluster:
        await cluster.start_service("api")
        cluster.keep_running()
        faults = await _restart_failed_for_want_of_its_log(cluster, "api")
        assert cluster.take_harness_faults() == []
    assert len(faults) == 1, faults
    assert isinstance(faults[0], RestartFailed)
    assert str(faults[0]).startswith("the watchdog's restart of api failed: FileNotFoundError("), (
        faults[0]
    )
    assert isinstance(faults[0].__cause__, FileNotFoundError)


async def test_a_failed_watchdog_restart_of_a_service_is_told_and_the_watchdog_goes_on() -> None:
    """The watchdog's restart of a crashed projector fails by a fault of the harness (its log
    cannot be opened): the cluster hands it over naming the restart and its cause, and the
    watchdog goes on restarting the others (a crashed API comes back)."""
    async with api_only_cluster() as cluster:
        cluster.add_service("projector", "projector")
        await cluster.start_service("api")
        await cluster.start_service("projector")
        cluster.keep_running()
        faults = await _restart_failed_for_want_of_its_log(cluster, "projector")
        api = cluster.services["api"]
        crashed_api = _crashed(cluster, "api")
        async with asyncio.timeout(60):
            while not (api.proc is not crashed_api and api.alive):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    assert faults, "the failed restart was not told"
    assert all(isinstance(fault, RestartFailed) for fault in faults), faults
    assert str(faults[0]).startswith(
        "the watchdog's restart of projector failed: FileNotFoundError("
    ), faults[0]


async def test_a_service_that_cannot_be_restarted_is_told_once_counting_its_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The watchdog's restart of a crashed projector fails round after round (its log cannot be
    opened): the cluster hands over one fault, "failed N times" with the first error, not one a
    round (a test's teardown showed dozens)."""
    async with api_only_cluster() as cluster:
        projector = cluster.add_service("projector", "projector")
        projector.spawn()
        cluster.keep_running()
        projector.log_file = cluster.root / "no-such-folder" / "projector.log"
        _crashed(cluster, "projector")
        async with asyncio.timeout(60):
            while projector.crashes < 4:  # noqa: ASYNC110 - the watchdog's rounds: 3 restarts
                await asyncio.sleep(0.05)
        projector.wanted = False
        faults = cluster.take_harness_faults()
    failed = [
        r for r in caplog.records if r.getMessage() == "the watchdog's restart of projector failed"
    ]
    assert len(failed) >= 3, failed
    assert len(faults) == 1, faults
    assert str(faults[0]).startswith(
        f"the watchdog's restart of projector failed {len(failed)} times: FileNotFoundError("
    ), faults[0]
    assert isinstance(faults[0].__cause__, FileNotFoundError)


def test_harness_faults_are_kept_at_most_a_bound_the_rest_counted() -> None:
    """Failed restarts of ever new causes: at most KEPT are kept, and the rest are told as a
    count of faults and of their failures, so a test's teardown shows a bounded list."""
    faults = HarnessFaults()
    for n in range(KEPT + 5):
        cause = type(f"Cause{n}", (OSError,), {})
        for _ in range(3):
            faults.restart_failed("runner-1", cause(n), None)
    told = faults.take_all()
    assert len(told) == KEPT + 1, told
    assert str(told[0]) == "the watchdog's restart of runner-1 failed 3 times: Cause0(0)"
    assert isinstance(told[-1], HarnessFaultsNotKept), told[-1]
    assert str(told[-1]) == (
        f"5 more faults (15 failures) were not kept: at most {KEPT} failed restarts (services "
        "and causes) are, per test and left over"
    )
    assert faults.take_all() == []


def _causes(count: int) -> list[OSError]:
    return [type(f"Cause{n}", (OSError,), {})(n) for n in range(count)]


def test_a_tests_own_failed_restart_is_shown_however_many_were_left_over_before_it() -> None:
    """A shared cluster with more left-over failed restarts than are kept: a later test's own
    failed restart is still told to it in full, not only counted."""
    faults = HarnessFaults()
    faults.test_began("first", {})
    assert faults.test_ended("first") == []
    for cause in _causes(KEPT + 2):
        faults.restart_failed("runner-1", cause, None)
    faults.test_began("second", {})
    faults.restart_failed("runner-2", OSError("its own"), None)
    [own] = faults.test_ended("second")
    assert str(own) == "the watchdog's restart of runner-2 failed: OSError('its own')", own
    left = faults.take_all()
    assert len(left) == KEPT + 1, left
    assert str(left[-1]).startswith("2 more faults (2 failures) were not kept"), left[-1]


def test_a_moved_api_is_told_however_many_restarts_failed_and_never_counted_as_not_kept() -> None:
    """The test's failed restarts fill the kept: an API moved during it still reaches its next
    request; a move told on the spot (its start raised it) is not counted as not kept."""
    faults = HarnessFaults()
    for cause in _causes(KEPT):
        faults.restart_failed("runner-1", cause, None)
    faults.forget(faults.api_moved("port 9 is not our API's; the cluster moved api to port 10"))
    faults.api_moved("port 10 is not our API's; the cluster moved api to port 11")
    moved = faults.take_move()
    assert str(moved) == "port 10 is not our API's; the cluster moved api to port 11", moved
    told = faults.take_all()
    assert len(told) == KEPT, told
    assert not any(isinstance(fault, HarnessFaultsNotKept) for fault in told), told


def test_failed_restarts_left_over_for_different_reasons_are_told_apart() -> None:
    """A service down since before a test began whose restart failed, then failed again
    between tests: two faults, each with its own reason, not one counted under the first's."""
    faults = HarnessFaults()
    last_process = object()
    faults.test_began("first", {"runner-1": last_process})
    faults.restart_failed("runner-1", OSError(), last_process)
    assert faults.test_ended("first") == []
    faults.restart_failed("runner-1", OSError(), last_process)
    down, between = faults.take_all()
    assert down.__notes__[0].startswith("left over: runner-1 was down already"), down
    assert between.__notes__[0].startswith("left over: it happened while none of"), between


def test_a_fault_of_a_test_that_did_not_end_normally_is_left_over() -> None:
    """A test's teardown never asked for its faults (its end did not run): the next test is
    not told them, and the cluster's stop tells them as left over, naming that test."""
    faults = HarnessFaults()
    faults.test_began("first", {})
    faults.restart_failed("runner-1", OSError(), None)
    faults.test_began("second", {})
    assert faults.test_ended("second") == []
    [left] = faults.take_all()
    assert left.__notes__ == [
        "left over: it happened during first, which did not end normally (its teardown never "
        "told it)"
    ], left


def test_an_api_moved_between_a_shared_clusters_tests_is_left_over_not_the_next_ones() -> None:
    """A shared cluster's API moved off a taken port while none of its tests ran: the next
    test's requests are not failed for it (the clients follow the move at once), and the
    cluster's stop tells it, saying it is left over; one moved during a test is that test's."""
    faults = HarnessFaults()
    faults.test_began("first", {})
    assert faults.test_ended("first") == []
    faults.api_moved("port 9 is not our API's; the cluster moved api to port 10")
    faults.test_began("second", {})
    assert faults.take_move() is None
    faults.api_moved("port 10 is not our API's; the cluster moved api to port 11")
    during = faults.take_move()
    assert faults.test_ended("second") == []
    [left] = faults.take_all()
    assert str(during) == "port 10 is not our API's; the cluster moved api to port 11"
    assert isinstance(left, NotOurApi)
    assert str(left) == "port 9 is not our API's; the cluster moved api to port 10"
    assert left.__notes__[0].startswith("left over: it happened while none of this shared"), left


def test_a_restart_failed_as_a_shared_cluster_was_set_up_is_left_over() -> None:
    """The watchdog's restart failed while the fixture set the shared cluster up: its first
    test does not fail for it, and the cluster's stop tells it, saying it is left over."""
    faults = HarnessFaults()
    faults.restart_failed("runner-1", OSError(), None)
    faults.test_began("first", {})
    assert faults.test_ended("first") == []
    [left] = faults.take_all()
    assert str(left) == "the watchdog's restart of runner-1 failed: OSError()"
    assert left.__notes__ == [
        "left over: it happened before this shared cluster's first test began"
    ], left


async def test_a_left_over_fault_is_told_on_the_error_of_a_stop_that_failed() -> None:
    """A shared cluster's stop is the only place its left-over faults are told: a service's
    stop failing there still tells them, as notes on the stop's error, not dropped."""
    with scratch_dir("jobrunner-test-faults-stop-failed-") as root:
        cluster = FaultCluster(root, SHORT_TTL)
        await in_thread(cluster.nats.start)
        await in_thread(cluster.postgres.start)
        api = cluster.add_service("api", "api")
        cluster.harness_faults.test_began("first", {})
        assert cluster.test_ended("first") == []
        cluster.harness_faults.restart_failed("runner-1", OSError("no log"), None)

        def stop_failing(timeout: float = 30.0) -> None:
            raise OSError("the api's stop failed")

        api.stop = stop_failing  # type: ignore[method-assign]
        with pytest.raises(OSError, match="the api's stop failed") as stopping:
            await cluster.stop()
    assert cluster.nats.proc is None or cluster.nats.proc.poll() is not None
    [told] = stopping.value.__notes__
    assert told.startswith(
        "also not yet told: RestartFailed(\"the watchdog's restart of runner-1 failed: "
        "OSError('no log')\"); left over: it happened while none of this shared cluster's"
    ), told
    assert cluster.take_harness_faults() == []


def test_harness_faults_not_yet_told_are_raised_together_naming_each_once() -> None:
    """A cluster carrying a failed restart and an API moved off a taken port: both are raised
    at the test's end in one group, each named; asked again, nothing is left to raise."""
    with scratch_dir("jobrunner-test-faults-told-") as root:
        cluster = FaultCluster(root, SHORT_TTL)
        cluster.harness_faults.restart_failed("runner-1", OSError(), None)
        cluster.harness_faults.api_moved(
            "port 9 is not our API's; the cluster moved api to port 10"
        )
        with pytest.raises(ExceptionGroup) as raised:
            raise_harness_faults(cluster.take_harness_faults())
        raise_harness_faults(cluster.take_harness_faults())  # told once: nothing now
    assert raised.value.message == "the fault harness went wrong during this test"
    told = [str(fault) for fault in raised.value.exceptions]
    assert told == [
        "the watchdog's restart of runner-1 failed: OSError()",
        "port 9 is not our API's; the cluster moved api to port 10",
    ]
    assert isinstance(raised.value.exceptions[1], NotOurApi)


def test_a_tests_own_clusters_are_found_among_its_fixtures_and_no_other() -> None:
    """The clusters whose harness faults fail a test: those among its fixture values, also one
    a fixture holds in a tuple or a dataclass beside its proxy, never another test's."""

    @dataclass
    class WithProxy:
        cluster: FaultCluster
        proxy: object

    with scratch_dir("jobrunner-test-faults-own-") as root:
        own, held, in_tuple, other = (FaultCluster(root / n, SHORT_TTL) for n in "ohto")
        fixtures = [own, WithProxy(held, object()), (in_tuple, object()), "a string", 7]
        found = clusters_among(fixtures)
    assert found == [own, held, in_tuple]
    assert other not in found
