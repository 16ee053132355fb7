"""A whole jobrunner as ``jobrunner up`` runs it, on servers a fault test may pause or kill.

Its own nats-server and Postgres (never the session-shared ones), then the projector, the runners
and the API as separate ``python -m jobrunner.cli`` processes configured by ``JOBRUNNER_*``
variables. As ``jobrunner up``'s supervisor does, a service that exits on its own is started again
(and counted: a crash is a figure worth reporting); one the test kills stays down until the test
starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from jobrunner.common.settings import Settings
from jobrunner.embedded.nats import EmbeddedNats
from jobrunner.embedded.postgres import EmbeddedPostgres
from jobrunner.embedded.scratch import scratch_dir
from jobrunner.embedded.serverprocess import free_port
from tests.faults.harness_faults import HarnessFault, HarnessFaults
from tests.faults.services import RESTART_DELAY, SEPARATE_HOSTS, Service
from tests.faults.toolrecord import ToolJob
from tests.freeze import freeze, thaw
from tests.servers import TEST_POSTGRES_SETTINGS
from tests.tools import http_clients
from tests.tools.api_address import ApiAddress, NotOurApi, new_instance_name
from tests.tools.runners import runner_env

TOOL = "tests/faults/tools/numbered.py"
POISON_TOOL = "tests/faults/tools/poison.py"
ARTIFACT_TOOL = "tests/tools/artifacts.py"
# What a service logs once its start is done; an API has none: it has started once it answers.
READY_LINES = {
    "projector": "projector started",
    "runner": "runner started",
    "notifier": "notifier started",
}


class AlreadyRunning(RuntimeError):
    """A start of a service whose process still runs: a second process beside it would fight
    it (an API for its port, a runner for its state directory)."""


def clusters_among(values: Iterable[object]) -> list[FaultCluster]:
    """The fault clusters among ``values`` (a test's fixture values: its own clusters, not
    those of other tests alive in the same process), also one held in a fixture's tuple or
    dataclass (a cluster with its proxy)."""
    found: list[FaultCluster] = []
    for value in values:
        held: Iterable[object] = ()
        if isinstance(value, tuple | list):
            held = value
        elif is_dataclass(value) and not isinstance(value, type):
            held = [getattr(value, field.name) for field in fields(value)]
        for candidate in (value, *held):
            if isinstance(candidate, FaultCluster) and candidate not in found:
                found.append(candidate)
    return found


DURING_THE_TEST = "the fault harness went wrong during this test"


def raise_harness_faults(faults: list[Exception], what: str = DURING_THE_TEST) -> None:
    """Raise ``faults``: the one fault itself, several as one ExceptionGroup saying ``what``."""
    if len(faults) == 1:
        raise faults[0]
    if faults:
        raise ExceptionGroup(what, faults)


def cluster_faults_fail_their_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """The body of the faults' and multinode's autouse fixture of that name: a test during
    which the harness of its clusters went wrong (a failed watchdog restart, an API moved off
    a port another program took) fails at its end ("ERROR at teardown"), naming it: its
    requests may have reached no API, or another program's. Only its own clusters' faults, and
    of a shared one (its fixture set up before the test) only those that happened while this
    test ran (harness_faults.py): an earlier test's are not this test's."""
    assert isinstance(request.node, pytest.Function)
    test = request.node.nodeid
    # The fixtures wider than the test are set up before it (pytest sets up the wider scopes
    # first): the clusters among them now are shared with other tests.
    for cluster in clusters_among(request.node.funcargs.values()):
        cluster.test_began(test)
    yield
    clusters = clusters_among(request.node.funcargs.values())
    raise_harness_faults([fault for cluster in clusters for fault in cluster.test_ended(test)])


# Each test takes a lock of its own, so a job a failing test left behind cannot hold up the next.
LOCK_TYPES = 24


def job_types_toml() -> str:
    """``free`` (no lock) and ``slot_<n>`` (each its own queued lock), all running the numbered
    tool, ``poison`` (the tool of hostile output) and ``external`` (reported over HTTP)."""

    def job_type(name: str, lock: str | None) -> str:
        locked = f'lock = "{lock}"\non_busy = "queue"\n' if lock else ""
        return (
            f"[job_types.{name}]\n"
            f'argv = ["{{python}}", "{TOOL}"]\ntimeout_seconds = 600\ncancel_grace_seconds = 1\n'
            f"{locked}"
            f'[job_types.{name}.parameters.lines]\ntype = "integer"\nflag = "--lines"\n'
            f"minimum = 1\nmaximum = 1000000\n"
            f'[job_types.{name}.parameters.interval]\ntype = "string"\nflag = "--interval"\n'
            f'pattern = "^[0-9.]+$"\ndefault = "0"\n'
            f'[job_types.{name}.parameters.record]\ntype = "string"\nflag = "--record"\n'
            f"max_length = 1000\n"
            f'[job_types.{name}.parameters.label]\ntype = "string"\nflag = "--label"\n'
            f'pattern = "^[a-z0-9_-]+$"\n'
            f'[job_types.{name}.parameters.hold_until]\ntype = "string"\nflag = "--hold-until"\n'
            f"max_length = 1000\n\n"
        )

    poison = f'[job_types.poison]\nargv = ["{{python}}", "{POISON_TOOL}"]\ntimeout_seconds = 120\n'
    # Done by a worker elsewhere, reported over HTTP; a runner holds its lock meanwhile.
    external = (
        '[job_types.external]\nexternal = true\ntimeout_seconds = 600\nlock = "external"\n'
        'on_busy = "queue"\n'
    )
    # Writes one file of ``mib`` MiB to its output directory (tests/faults/test_artifacts.py).
    artifacts = (
        f'[job_types.artifacts]\nargv = ["{{python}}", "{ARTIFACT_TOOL}", "--mode", "big"]\n'
        f"timeout_seconds = 300\n"
        f'[job_types.artifacts.parameters.mib]\ntype = "integer"\nflag = "--mib"\n'
    )
    return (
        job_type("free", None)
        + "".join(job_type(f"slot_{n}", f"slot_{n}") for n in range(LOCK_TYPES))
        + poison
        + external
        + artifacts
    )


@dataclass
class JobRow:
    id: str
    status: str
    error_code: str | None
    runner_id: str | None
    log_count: int


class FaultCluster:
    """Servers and services of one test module, and the handles the tests need to hurt them."""

    def __init__(self, root: Path, lease_ttl: float, runners: int = 2, **settings: Any) -> None:
        self.root = root
        self.lease_ttl = lease_ttl
        self.extra_settings = settings  # other settings of every service, as Settings takes them
        self.records = root / "records"
        self.records.mkdir(parents=True, exist_ok=True)
        self.job_types_file = root / "jobtypes.toml"
        self.job_types_file.write_text(job_types_toml())
        self.nats = EmbeddedNats(root / "nats")
        self.postgres = EmbeddedPostgres(
            root / "pg" / "data", settings=TEST_POSTGRES_SETTINGS, database="jobrunner"
        )
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # Where each API service of ours listens and the name it answers /health with: after a
        # restart on its old port another test's server may hold that port, and only the name
        # tells our API from it.
        self.api_addresses: dict[str, ApiAddress] = {}
        # What went wrong in this harness: a watchdog's restart that failed other than by the
        # service failing to start, an API moved off a port another program took (the test's
        # next client() raises it: its requests went to that program; a test's start_service
        # says it at once). Raised at the end of the test it happened during (the conftests'
        # harness_faults_fail_their_test), or at the cluster's stop.
        self.harness_faults = HarnessFaults()
        self.services: dict[str, Service] = {}
        self._runner_count = runners
        self._watchdog: asyncio.Task[None] | None = None
        # One start of a service at a time: two would kill each other's process and both move
        # an API's port. The watchdog's restart of an API runs in a task of its own, which a
        # test's start_service cancels (the test's start takes over).
        self._starting: dict[str, asyncio.Lock] = {}
        self._restarting: dict[str, asyncio.Task[None]] = {}
        self._next_lock = 0
        self._next_label = 0

    # --- start and stop
    @property
    def settings(self) -> Settings:
        return Settings(
            nats_url=self.nats.url,
            database_url=self.postgres.url,
            prefix="faults",
            job_types_file=str(self.job_types_file),
            state_dir=str(self.root / "state"),
            host="127.0.0.1",
            port=self.port,
            demo_pace=0.0,
            lease_ttl_seconds=self.lease_ttl,
            auth=False,
            log_format="json",
            log_level="info",
            **self.extra_settings,
        )

    def add_service(
        self, name: str, command: str, hostname: str | None = None, **overrides: Any
    ) -> Service:
        if command == "api":
            port = overrides.get("port", self.port)
            address = ApiAddress(port, new_instance_name(f"faults-{name}"))
            overrides["port"] = address.port
            overrides["api_instance_id"] = address.instance
            self.api_addresses[name] = address
        service = Service(
            name,
            command,
            runner_env(self.settings, **overrides),
            self.root / f"{name}.log",
            hostname,
        )
        self.services[name] = service
        return service

    def remove_service(self, name: str) -> None:
        """SIGKILL a service and forget it (and where it listened, for an API)."""
        self.services.pop(name).kill()
        self.api_addresses.pop(name, None)

    async def start(self) -> None:
        await in_thread(self.nats.start)
        await in_thread(self.postgres.start)
        self.add_service("projector", "projector")
        for n in range(1, self._runner_count + 1):
            self.add_runner(f"runner-{n}")
        self.add_service("api", "api")
        # The projector creates the read models; the API reads them.
        await self.start_service("projector")
        await asyncio.gather(
            *(self.start_service(name) for name in self.services if name.startswith("runner-"))
        )
        await self._start("api", 60.0)
        # No test has an address of the API yet: one moved off a taken port starts quietly.
        self.harness_faults.forget_moves()
        self.keep_running()

    def keep_running(self) -> None:
        """From now on a service that exits on its own is started again (``_keep_running``)."""
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._keep_running())

    def add_runner(self, name: str) -> Service:
        """A runner with a state directory (and host name, when we may) of its own, as on a
        machine of its own."""
        return self.add_service(
            name,
            "runner",
            hostname=f"faults-{name}" if SEPARATE_HOSTS else None,
            runner_id=name,
            state_dir=str(self.root / "state" / name),
        )

    async def start_service(self, name: str, timeout: float = 60.0) -> None:
        """Start a service and wait until it has started (an API: answers /health with its own
        name). An API whose port another program answers on is moved to a free port and
        started there, and this fails all the same, saying what answered: the test's requests
        to the old address went to that program."""
        restart = self._restarting.pop(name, None)
        if restart is not None and not restart.done():
            restart.cancel()
            await asyncio.gather(restart, return_exceptions=True)
            self.services[name].kill()  # the process it started: this start starts its own
        moved = await self._start(name, timeout)
        if moved is not None:
            self.harness_faults.forget(moved)  # told here and now
            raise moved.first

    async def _start(self, name: str, timeout: float) -> HarnessFault | None:
        """Spawn and wait_started; the move of an API off its port when another program
        answered there (None: it did not), kept in ``harness_faults`` from then on (and a
        failure to start on the new port carries it as a note). A service whose process still
        runs is not spawned again (AlreadyRunning): two would fight over its port or state
        directory."""
        async with self._starting.setdefault(name, asyncio.Lock()):
            service = self.services[name]
            if service.alive:
                assert service.proc is not None
                raise AlreadyRunning(
                    f"{name} is running already (pid {service.proc.pid}): kill or stop it before"
                    " starting it again"
                )
            ready = READY_LINES.get(service.command)
            seen = service.log_count(ready) if ready else 0
            service.spawn()
            try:
                await self.wait_started(name, seen, timeout)
                return None
            except NotOurApi as taken:
                service.kill()
                new = self._move_api(name)
                lost = f"{taken}; the cluster moved {name} to port {new}"
                moved = self.harness_faults.api_moved(lost)
                service.spawn()
                try:
                    await self.wait_started(name, 0, timeout)
                except (AssertionError, TimeoutError) as failed:
                    failed.add_note(lost)
                    raise
                return moved

    async def wait_started(self, name: str, seen: int = 0, timeout: float = 60.0) -> None:
        """Until service ``name`` says it started (its ready line logged more than ``seen``
        times; an API: answers /health naming itself); AssertionError with its log when it
        exits meanwhile, NotOurApi when another program answers on an API's port."""
        service = self.services[name]
        ready = READY_LINES.get(service.command)
        async with asyncio.timeout(timeout):
            while True:
                if ready and service.log_count(ready) > seen:
                    return
                address = self.api_addresses.get(name)  # anew: a start may move it meanwhile
                where = f" (port {address.port})" if address else ""
                if address is not None:
                    try:
                        if await address.answers():
                            return
                    except NotOurApi as other:
                        state = "still running" if service.alive else "not running"
                        raise NotOurApi(
                            f"{other}; our {name} is {state}, its log ends:\n{_log_tail(service)}"
                        ) from None
                if not service.alive:
                    raise AssertionError(f"{name} exited at start{where}:\n{_log_tail(service)}")
                await asyncio.sleep(0.05)

    def _move_api(self, name: str) -> int:
        """Listen on a free port from the next start of API ``name`` on, keeping its name; the
        clients' address follows at once, so that none reaches the program on the old port.
        The new port."""
        new = free_port()
        self.api_addresses[name] = ApiAddress(new, self.api_addresses[name].instance)
        self.services[name].env["JOBRUNNER_PORT"] = str(new)
        self.api_moved(name, new)
        return new

    def api_moved(self, name: str, port: int) -> None:
        """API service ``name`` listens on ``port`` from now on: the clients' address follows."""
        if name == "api":
            self.port = port
            self.base_url = f"http://127.0.0.1:{port}"

    async def _keep_running(self) -> None:
        # An API is restarted in a task of its own: its start is waited for (another program
        # may answer on its port), and the other services are not kept waiting meanwhile.
        restarting = self._restarting
        try:
            while True:
                # A copy: a test may add a service while this waits to restart a crashed one.
                for name, service in list(self.services.items()):
                    if name in restarting and not restarting[name].done():
                        continue
                    if service.wanted and not service.alive:
                        service.crashes += 1
                        await asyncio.sleep(RESTART_DELAY)
                        if not (service.wanted and not service.alive):
                            continue
                        if service.command == "api":
                            restarting[name] = asyncio.create_task(self._restart_api(name))
                        else:
                            self._respawn(name)
                await asyncio.sleep(0.1)
        finally:
            tasks = list(restarting.values())
            restarting.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _restart_api(self, name: str) -> None:
        # A port it had to leave is in harness_faults already (_start): the test is told there.
        try:
            await self._start(name, 60.0)
        except (AssertionError, TimeoutError):
            pass  # exited at start (counted when the watchdog sees it down) or still starting
        except Exception as error:
            self._restart_failed(name, error)

    def _respawn(self, name: str) -> None:
        """The watchdog's restart of a service other than an API: its failure is told to the
        test (``harness_faults``) instead of ending the watchdog, and with it every later
        restart."""
        try:
            self.services[name].spawn()
        except Exception as error:
            self._restart_failed(name, error)

    def _restart_failed(self, name: str, error: Exception) -> None:
        logging.getLogger(__name__).exception("the watchdog's restart of %s failed", name)
        self.harness_faults.restart_failed(name, error, self.services[name].proc)

    def take_harness_faults(self) -> list[Exception]:
        """What went wrong in this harness and was not yet told: a restart that failed (once
        per service, exception type and test, counted), an API moved off a port another
        program took; each told once."""
        return self.harness_faults.take_all()

    def test_began(self, test: str) -> None:
        """``test`` runs on this cluster, which is shared with other tests (harness_faults.py)."""
        down = {
            name: service.proc
            for name, service in self.services.items()
            if service.wanted and not service.alive
        }
        self.harness_faults.test_began(test, down)

    def test_ended(self, test: str) -> list[Exception]:
        """The harness faults that happened during ``test``, to raise at its end."""
        return self.harness_faults.test_ended(test)

    def _raise_lost_port(self) -> None:
        moved = self.harness_faults.take_move()
        if moved is not None:
            raise moved

    async def stop(self) -> None:
        try:
            await self._stop_everything()
        except BaseException as stopping:
            # A stop cut short (a service's stop failed, the teardown cancelled) is the last
            # place a shared cluster's left-over faults are told: they ride on its error.
            for fault in self.take_harness_faults():
                notes = "".join(f"; {note}" for note in getattr(fault, "__notes__", ()))
                stopping.add_note(f"also not yet told: {fault!r}{notes}")
            raise
        # Not yet told to a test: of a shared cluster, what none of its tests ran for.
        left_over = "the fault harness of this shared cluster went wrong outside its tests"
        raise_harness_faults(
            self.take_harness_faults(), left_over if self.harness_faults.shared else DURING_THE_TEST
        )

    async def _stop_everything(self) -> None:
        try:
            if self._watchdog is not None:
                self._watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watchdog
            for service in self.services.values():
                if service.proc is not None and service.proc.pid:
                    thaw(service.proc.pid)
            for name in sorted(self.services, key=lambda n: not n.startswith("runner")):
                await asyncio.to_thread(self.services[name].stop)
        finally:
            # A stop cut short (a service's stop failed, the teardown cancelled) leaves none
            # of them running: SIGKILL, which needs no waiting.
            for service in self.services.values():
                service.kill()
            self.resume_nats()
            await asyncio.to_thread(self.nats.stop)
            await asyncio.to_thread(self.postgres.stop)

    # --- faults
    def pause_nats(self) -> None:
        assert self.nats.proc is not None
        freeze(self.nats.proc.pid)

    def resume_nats(self) -> None:
        if self.nats.proc is not None and self.nats.proc.poll() is None:
            thaw(self.nats.proc.pid)

    async def restart_nats(self, down_seconds: float = 0.0) -> None:
        """SIGKILL nats-server, leave it down for ``down_seconds``, then start it again on the
        same port and store directory."""
        self.nats.kill()
        await asyncio.sleep(down_seconds)  # the outage itself lasts this long
        self.nats = EmbeddedNats(self.nats.store_dir, port=self.nats.port)
        await asyncio.to_thread(self.nats.start)

    async def restart_postgres(self, kill: bool) -> None:
        """Fast shutdown (or SIGKILL of the whole server), then start on the same data."""
        if kill:
            # Off the event loop: the kill reads every /proc/*/maps twice (~0.25 s) and waits;
            # to its end even when the test is cancelled meanwhile.
            await in_thread(self.postgres.kill)
        else:
            await asyncio.to_thread(self.postgres.stop)
        await self.start_postgres()

    async def start_postgres(self) -> None:
        """Start Postgres again on its port and data after a stop (``postgres.stop``)."""
        self.postgres = EmbeddedPostgres(
            self.postgres.data_dir,
            port=self.postgres.port,
            settings=TEST_POSTGRES_SETTINGS,
            database="jobrunner",
        )
        await in_thread(self.postgres.start)

    # --- jobs
    def fresh_lock_type(self) -> str:
        """A job type whose lock no other test uses."""
        assert self._next_lock < LOCK_TYPES, "raise LOCK_TYPES"
        self._next_lock += 1
        return f"slot_{self._next_lock - 1}"

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client of the API; NotOurApi, once, when the watchdog found another program on
        the API's port (the test's earlier requests may have gone to it)."""
        self._raise_lost_port()
        return http_clients.client(base_url=self.base_url, timeout=30, **kwargs)

    async def submit_plain(self, job_type: str) -> str:
        """Start a job type without parameters; returns its id."""
        async with self.client() as client:
            response = await client.post("/api/jobs", json={"job_type": job_type})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def submit(self, job_type: str, lines: int, interval: float) -> ToolJob:
        """Start the tool as a job; returns the job with the path of the tool's own record."""
        self._next_label += 1
        label = f"job-{self._next_label}"
        record = self.records / f"{label}.txt"
        async with self.client() as client:
            response = await client.post(
                "/api/jobs",
                json={
                    "job_type": job_type,
                    "parameters": {
                        "lines": lines,
                        "interval": f"{interval:g}",
                        "record": str(record),
                        "label": label,
                    },
                },
            )
        assert response.status_code == 201, response.text
        return ToolJob(str(response.json()["id"]), label, record)

    async def submit_held(self, name: str, lines: int) -> tuple[str, Path]:
        """Start the tool on a lock of its own: it prints ``lines`` lines, then waits until its
        gate file exists (the test touches it when the job may end). The job's id and the gate."""
        gate = self.records / f"{name}-gate"
        parameters = {
            "lines": lines,
            "record": str(self.records / f"{name}.txt"),
            "label": name,
            "hold_until": str(gate),
        }
        async with self.client() as client:
            response = await client.post(
                "/api/jobs", json={"job_type": self.fresh_lock_type(), "parameters": parameters}
            )
        assert response.status_code == 201, response.text
        return str(response.json()["id"]), gate

    async def cancel(self, job_id: str) -> None:
        """Clean-up after a failed test: stop a job that would otherwise run on."""
        with contextlib.suppress(httpx.HTTPError):
            async with self.client() as client:
                await client.post(f"/api/jobs/{job_id}/cancel")

    # --- the read models, read directly (the API may be the part under fault)
    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """Run a query; connection errors (Postgres restarting) are retried for a while."""
        async with asyncio.timeout(60):
            while True:
                try:
                    conn = await asyncpg.connect(self.postgres.url, timeout=5)
                except (OSError, asyncpg.PostgresError, TimeoutError):
                    await asyncio.sleep(0.1)
                    continue
                try:
                    return list(await conn.fetch(sql, *args))
                except asyncpg.UndefinedTableError:
                    return []
                except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError):
                    await asyncio.sleep(0.1)
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def job(self, job_id: str) -> JobRow | None:
        rows = await self.query(
            "SELECT id, status, error_code, runner_id, log_count FROM readmodel.jobs WHERE id = $1",
            job_id,
        )
        return JobRow(**dict(rows[0])) if rows else None

    async def stored_lines(self, job_id: str) -> list[tuple[int, str]]:
        rows = await self.query(
            "SELECT seq, text FROM readmodel.log_lines WHERE job_id = $1 ORDER BY seq", job_id
        )
        return [(r["seq"], r["text"]) for r in rows]

    async def stored_count(self, job_id: str) -> int:
        rows = await self.query(
            "SELECT count(*) AS n FROM readmodel.log_lines WHERE job_id = $1", job_id
        )
        return int(rows[0]["n"]) if rows else 0

    async def wait_job(
        self, job_id: str, condition: Callable[[JobRow], bool], timeout: float
    ) -> JobRow | None:
        """Poll the read model until ``condition`` holds; the last row seen if it never did."""
        row = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    row = await self.job(job_id)
                    if row is not None and condition(row):
                        return row
                    await asyncio.sleep(0.05)
        return row

    async def wait_stored(self, job_id: str, count: int, timeout: float) -> int:
        """Poll until at least ``count`` lines of the job are stored; the count reached."""
        stored = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while (stored := await self.stored_count(job_id)) < count:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # another process writes it: poll
        return stored


TERMINAL = ("completed", "failed", "cancelled")


def is_terminal(row: JobRow) -> bool:
    return row.status in TERMINAL


def _log_tail(service: Service) -> str:
    try:
        return service.log_file.read_text(errors="replace")[-3000:]
    except FileNotFoundError:
        return "(no log)"


def now() -> float:
    return time.monotonic()


async def in_thread(call: Callable[[], None]) -> None:
    """``call()`` (a server's start) in a thread, waited for to its end even when the caller is
    cancelled (a start timing out): a server still starting would otherwise start after the
    clean-up stopped the others, and be left running."""
    done = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await done
        raise


# A cluster's start gives up (TimeoutError) after this long, well within pytest's own timeout
# for a test and its setup (pyproject.toml: 300 s): a start cut short by pytest-timeout skips the
# clean-up in the fixture's ``finally``, and every server and service started is left running.
START_TIMEOUT = 150.0

# The lease TTL of the shared cluster: short, so the suite is fast (ack wait 3 s, renewal 0.5 s).
SHORT_TTL = 3.0


@asynccontextmanager
async def running_cluster(lease_ttl: float, runners: int = 2) -> AsyncIterator[FaultCluster]:
    # Not under pytest's tmp_path: when we are root, Postgres runs as the 'postgres' user, who
    # must be able to reach its data directory.
    with scratch_dir("jobrunner-test-faults-") as root:
        cluster = FaultCluster(root, lease_ttl, runners)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await cluster.start()
            yield cluster
        finally:
            await cluster.stop()
