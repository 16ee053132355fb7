"""A service whose NATS connection nats-py closed for good ends non-zero, so that it is restarted.

The close is provoked for real: the runner's user loses its password in a nats-server config
reload (a rotated password), and the server closes the runner's connection with
``-ERR 'Authorization Violation'``, which nats-py treats as final. The other services in this
test connect as another user and keep their connections.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import msgspec

from jobrunner.common.eventstore import NATS_CLOSED_EXIT
from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from tests.system import System
from tests.tools.runners import (
    RUNNER_TYPES,
    RunnerProcess,
    lines_of,
    start_job,
    status_events,
    wait_dead,
    wait_file,
    wait_job,
    wait_status,
)
from tests.tools.service_processes import ServiceProcess, wait_api_healthy
from tests.webhook_receiver import Receiver, running_receiver
from tests.webhook_support import start_job as webhook_job
from tests.webhook_support import webhook_settings

SERVICES = ("services", "services-password")


def _write_users(nats: EmbeddedNats, runner_password: str) -> None:
    users = [
        {"user": SERVICES[0], "password": SERVICES[1]},
        {"user": "runner", "password": runner_password},
    ]
    # The server's name too: a reload refuses a config that would drop the one given at start.
    (nats.store_dir / "auth.conf").write_text(
        f'server_name: "jobrunner"\nauthorization {{ users: {json.dumps(users)} }}\n'
    )


def _runner_url(nats: EmbeddedNats, password: str) -> str:
    return f"nats://runner:{password}@{nats.host}:{nats.port}"


async def _wait_exit(runner: RunnerProcess, timeout: float = 15.0) -> int:
    assert runner.proc is not None
    async with asyncio.timeout(timeout):
        while runner.proc.poll() is None:  # noqa: ASYNC110 - nothing to wait on but the child
            await asyncio.sleep(0.05)
    return runner.proc.returncode


async def test_a_runner_whose_connection_the_server_closed_exits_and_its_restart_works(
    settings: Settings, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path / "nats", user=SERVICES[0], password=SERVICES[1])
    _write_users(nats, "first-password")
    nats.start()
    settings = msgspec.structs.replace(
        settings, nats_url=nats.url, job_types_file=RUNNER_TYPES, lease_ttl_seconds=3.0
    )
    system = System(settings)
    first_life = RunnerProcess(
        settings,
        tmp_path / "runner.log",
        runner_id="rotated",
        nats_url=_runner_url(nats, "first-password"),
    )
    # Its restart, as a supervisor started with the rotated password would run it.
    second_life = RunnerProcess(
        settings,
        tmp_path / "runner.log",
        runner_id="rotated",
        nats_url=_runner_url(nats, "second-password"),
    )
    try:
        await system.start_projector()
        await system.start_api()
        await first_life.start()
        async with system.client() as client:
            stranded = await start_job(client, "family", pidfile=str(tmp_path / "pids"))
            await wait_status(client, stranded, "running")
            tool, grandchild = map(int, (await wait_file(tmp_path / "pids")).split())

            _write_users(nats, "second-password")
            assert nats.proc is not None
            nats.proc.send_signal(signal.SIGHUP)  # reload: the runner's password is no more

            assert await _wait_exit(first_life) == NATS_CLOSED_EXIT
            log = (tmp_path / "runner.log").read_text()
            assert "nats connection closed for good" in log
            assert "authorization failed" in log  # nats-py's words for the -ERR
            # Its tool went with it (the guardian), so no second copy can run alongside.
            await wait_dead(tool)
            await wait_dead(grandchild)

            await second_life.start()
            lost = await wait_status(client, stranded, "failed", "completed", timeout=60)
            fresh = await start_job(client, "emit", lines=200, interval="0.001")
            done = await wait_status(client, fresh, "completed", "failed", timeout=60)
            await wait_job(client, fresh, lambda j: j["log_count"] == 200)
            lines = await lines_of(client, fresh)
        stranded_statuses = await status_events(settings, stranded)
    finally:
        first_life.stop()
        second_life.stop()
        await system.stop()
        nats.stop()
    assert lost["status"] == "failed"
    assert lost["error"]["code"] == "RUNNER_LOST"
    assert stranded_statuses == ["running", "failed"]
    assert done["status"] == "completed"
    assert [line["seq"] for line in lines] == list(range(1, 201))
    assert [line["text"] for line in lines] == [f"INFO line {i} [{i}/200]" for i in range(1, 201)]


def _delivered_jobs(receiver: Receiver) -> list[str]:
    return [msgspec.json.decode(got.body)["job_id"] for got in receiver.received]


def _rotate(nats: EmbeddedNats) -> None:
    _write_users(nats, "second-password")
    assert nats.proc is not None
    nats.proc.send_signal(signal.SIGHUP)


def _assert_exited_for_good(log_file: Path) -> None:
    log = log_file.read_text()
    assert "nats connection closed for good" in log
    assert "authorization failed" in log


async def test_a_projector_whose_connection_the_server_closed_exits_and_its_restart_projects(
    settings: Settings, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path / "nats", user=SERVICES[0], password=SERVICES[1])
    _write_users(nats, "first-password")
    nats.start()
    settings = msgspec.structs.replace(settings, nats_url=nats.url, job_types_file=RUNNER_TYPES)
    system = System(settings)
    lives = [
        ServiceProcess(
            "projector", settings, tmp_path / "projector.log", nats_url=_runner_url(nats, pw)
        )
        for pw in ("first-password", "second-password")
    ]
    try:
        lives[0].start()
        await system.start_runner()
        await system.start_api()
        await system.wait_read_models()
        async with system.client() as client:
            before = await start_job(client, "emit", lines=50, interval="0.001")
            await wait_job(client, before, lambda j: j["log_count"] == 50)

            _rotate(nats)
            assert await lives[0].wait_exit() == NATS_CLOSED_EXIT
            _assert_exited_for_good(tmp_path / "projector.log")

            after = await start_job(client, "emit", lines=50, interval="0.001")
            lives[1].start()
            done = await wait_job(
                client, after, lambda j: j["status"] == "completed" and j["log_count"] == 50
            )
            lines = await lines_of(client, after)
    finally:
        for life in lives:
            life.stop()
        await system.stop()
        nats.stop()
    assert done["status"] == "completed"
    assert [line["seq"] for line in lines] == list(range(1, 51))


async def test_an_api_whose_connection_the_server_closed_exits_and_its_restart_streams(
    settings: Settings, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path / "nats", user=SERVICES[0], password=SERVICES[1])
    _write_users(nats, "first-password")
    nats.start()
    settings = msgspec.structs.replace(settings, nats_url=nats.url, job_types_file=RUNNER_TYPES)
    system = System(settings)
    lives = [
        ServiceProcess(
            "api",
            settings,
            tmp_path / "api.log",
            nats_url=_runner_url(nats, pw),
            host="127.0.0.1",
            port=system.port,
        )
        for pw in ("first-password", "second-password")
    ]
    try:
        await system.start_projector()
        await system.start_runner()
        system.admin_token = await system.create_token("test-admin", "admin")
        lives[0].start()
        await wait_api_healthy(lives[0])
        async with system.client() as client:
            _rotate(nats)
            assert await lives[0].wait_exit() == NATS_CLOSED_EXIT
            _assert_exited_for_good(tmp_path / "api.log")

            lives[1].start()
            await wait_api_healthy(lives[1])
            job_id = await start_job(client, "emit", lines=50, interval="0.001")
            await wait_status(client, job_id, "completed")
            lines = await lines_of(client, job_id)  # its live stream, read to the end
    finally:
        for life in lives:
            life.stop()
        await system.stop()
        nats.stop()
    assert [line["seq"] for line in lines] == list(range(1, 51))


async def test_a_notifier_whose_connection_the_server_closed_exits_and_its_restart_delivers(
    settings: Settings, tmp_path: Path
) -> None:
    nats = EmbeddedNats(tmp_path / "nats", user=SERVICES[0], password=SERVICES[1])
    _write_users(nats, "first-password")
    nats.start()
    settings = msgspec.structs.replace(webhook_settings(settings), nats_url=nats.url)
    system = System(settings)
    lives = [
        ServiceProcess(
            "notifier", settings, tmp_path / "notifier.log", nats_url=_runner_url(nats, pw)
        )
        for pw in ("first-password", "second-password")
    ]
    try:
        async with running_receiver() as receiver:
            await system.start()
            lives[0].start()
            await webhook_job(system, {"url": receiver.url})
            await receiver.wait_for(1)

            _rotate(nats)
            assert await lives[0].wait_exit() == NATS_CLOSED_EXIT
            _assert_exited_for_good(tmp_path / "notifier.log")

            # A job that ends while no notifier runs: the restarted one delivers its webhook.
            after = await webhook_job(system, {"url": receiver.url})
            async with system.client() as client:
                await wait_status(client, after, "completed")
            lives[1].start()
            # (The first job's may come again first: its delivery may not have been recorded
            # when the notifier ended; a receiver tells repeats by the delivery id.)
            async with asyncio.timeout(30):
                while after not in (jobs := _delivered_jobs(receiver)):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
    finally:
        for life in lives:
            life.stop()
        await system.stop()
        nats.stop()
    assert jobs.count(after) == 1
